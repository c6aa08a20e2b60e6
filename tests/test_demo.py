"""`make run`: what it prints works when typed, and Ctrl-C leaves nothing of it behind."""
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from cra.cloud.demo_targets import LocalSshd, free_port

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


def run_as_printed(command):
    """A printed command line through /bin/sh -c exactly as printed; a shell reading stdin (ssh without a
    command) gets one command to run."""
    return subprocess.run(["/bin/sh", "-c", command], input="echo demo-$((6 * 7))\n", capture_output=True,
                          text=True, timeout=60)


def test_make_run_shows_a_working_system_over_tls_and_stops_all_of_it():
    """Every command the demo prints works when pasted into a shell, over https/wss with the demo's own
    authority; Ctrl-C says it stops, stops every process and removes the demo's files (private keys)."""
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
        assert re.search(r"^cra-cloud +https://127\.0\.0\.1:\d+ ", printed, re.M), printed
        # The remote access page comes first, with who to sign in as.
        assert re.match(r"\s*browser +https://127\.0\.0\.1:\d+/apps/remote-access/  sign in as admin / admin-pw", printed), printed
        workdir = re.search(r"^files +(\S+):", printed, re.M).group(1)
        commands = re.findall(r"^\s+\$ (.*)$", printed, re.M)
        expected = {"curl --cacert": '"userName": "admin"', "curl http": "Hello from behind the gateway"}
        if LocalSshd.available():
            expected.update({"ssh -p": "demo-42", "ssh -F": "demo-42"})
        assert sorted(next((k for k in expected if c.startswith(k)), c) for c in commands) == sorted(expected), commands
        for command in commands:
            result = run_as_printed(command)
            wanted = next(v for k, v in expected.items() if command.startswith(k))
            assert result.returncode == 0 and wanted in result.stdout, f"{command}\n{result.stdout}\n{result.stderr}"
        started = children(demo.pid)
        assert len(started) >= 4  # cra-cloud, cra-agent, and a cra-connect per service
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(30)
    assert code == 0
    assert not [pid for pid in started if alive(pid)], "processes of the demo outlived Ctrl-C"
    said = demo.stdout.read()
    assert "stopping cra-connect, cra-agent, cra-cloud" in said and f"stopped; {workdir} removed" in said, said
    assert not os.path.exists(workdir)


def test_a_port_in_use_is_named_with_the_reason():
    """`make run PORT=<busy>` says why the cloud could not start, not just that it did not."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cra.cloud.demo", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert re.search(rf"cloud did not start: cra-cloud: cannot listen on 127\.0\.0\.1:{port}: .*address already in use",
                     result.stderr), result.stderr
