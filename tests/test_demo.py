"""`make run`: what it prints works when typed, and Ctrl-C leaves nothing of it running."""
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from cra.cloud.demo import LocalSshd, free_port

READY = "Ctrl-C stops everything."


def children(pid):
    """Every process below pid, from /proc (the demo's cloud, agent, connects and sshd); a process
    that ends while it is read (sshd's child for a login that just finished) is passed over."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            kids = [int(k) for task in os.listdir(f"/proc/{parent}/task")
                    for k in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            continue
        found += kids
        queue += kids
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_make_run_shows_a_working_system_and_stops_all_of_it():
    demo = subprocess.Popen([sys.executable, "-m", "cra.cloud.demo", "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = ""
        for _ in range(40):
            line = demo.stdout.readline()
            printed += line
            if READY in line or not line:
                break
        assert READY in printed, printed
        web = re.search(r"curl (http://127\.0\.0\.1:\d+/)", printed).group(1)
        with urllib.request.urlopen(web, timeout=30) as page:
            assert b"Hello from behind the gateway" in page.read()
        if LocalSshd.available():
            ssh = shlex.split(re.search(r"^\s+(ssh -p .*)$", printed, re.M).group(1))
            login = subprocess.run([*ssh, "echo logged in as $(id -un)"], capture_output=True, text=True, timeout=60)
            assert login.stdout.strip() == f"logged in as {LocalSshd('.').user}", login.stderr
        started = children(demo.pid)
        assert len(started) >= 4  # cra-cloud, cra-agent, and a cra-connect per service
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(30)
    assert code == 0
    assert not [pid for pid in started if alive(pid)], "processes of the demo outlived Ctrl-C"
