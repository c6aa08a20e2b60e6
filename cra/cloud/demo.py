"""`make run`: the whole system on one machine, with no tenant.

cra-cloud with a seed, serving https and wss under a certificate from a local authority of its
own, the agent for device gw-001, the services behind the "gateway" (a small web page, a real OpenSSH
server, a VNC desktop and a telnet server, each when Debian's packages for it are installed),
cra-connect in front of the PASSTHROUGH ones and cra-cloud's remote access page for the others; then what runs where,
and commands to type (each line that starts with "$ " runs as printed). Ctrl-C stops everything
it started and removes its files, keys included.
"""
import argparse
import getpass
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from cra.cloud import certificates
from cra.cloud.demo_targets import LocalSshd, TelnetServer, VirtualDesktop, stop_all

BIN = os.path.dirname(sys.executable)
ADMIN = {"user": "admin", "password": "admin-pw"}
DEVICE = {"user": "device_gw-001", "password": "dev-pw"}
VNC_PASSWORD = "vnc-demo"  # VNC passwords are 8 characters at most
PAGE = b"<!doctype html><title>cra demo</title><h1>Hello from behind the gateway</h1>\n"


class WebPage:
    """The smallest service worth reaching: one page on 127.0.0.1."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def seed(configurations):
    return {"tenant": "t100",
            "users": [{**ADMIN, "roles": ["ROLE_REMOTE_ACCESS_ADMIN"]}, {**DEVICE, "device": "gw-001"}],
            "bootstrap": {"user": "devicebootstrap", "password": "boot-pw"},
            "devices": [{"externalId": "gw-001", "name": "gw-001", "configurations": configurations}]}


def start(command, workdir, name, env=None):
    """A program of the system, its output in workdir/NAME.log; the first line of its stdout, when it prints one."""
    log = open(os.path.join(workdir, f"{name}.log"), "ab")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **(env or {})}, text=True)


def first_line(proc, workdir, name, pattern):
    """What `pattern` finds in the program's first line; RuntimeError with the program's own last words when
    it printed none."""
    line = proc.stdout.readline()
    match = re.search(pattern, line)
    if match:
        return match.group(1)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
    with open(os.path.join(workdir, f"{name}.log"), errors="replace") as log:
        said = [text.strip() for text in log if text.strip()]
    raise RuntimeError(f"{name} did not start: {line.strip() or (said[-1] if said else 'no output')}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="cra-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8111, help="cra-cloud's port (default: %(default)s)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    workdir = tempfile.mkdtemp(prefix="cra-demo-")
    try:
        return run(args.port, workdir, stop)
    except RuntimeError as exc:
        print(f"cra-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"cra-demo: stopped; {workdir} removed", flush=True)


def start_target(target, what, notes):
    """A demo target started, or None with the reason in `notes` (missing Debian packages, a failed start)."""
    missing = target.missing()
    if missing:
        notes.append(f"{what:<12} not started: install Debian's {' '.join(missing)} (apt-get install {' '.join(missing)})")
        return None
    try:
        return target.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        notes.append(f"{what:<12} not started: {exc}")
        target.stop()
        return None


def run(port, workdir, stop):
    ca_file, certfile, keyfile = certificates.issue(workdir)
    web, sshd, procs = WebPage(), None, []
    desktop = telnetd = None
    notes = []  # what could not start, and why
    configurations = [{"name": "web", "hostname": "127.0.0.1", "port": web.port, "protocol": "PASSTHROUGH"}]
    try:
        if LocalSshd.available():
            sshd = LocalSshd(workdir).start()
            configurations.append({"name": "ssh", "hostname": "127.0.0.1", "port": sshd.port, "protocol": "PASSTHROUGH"})
            with open(sshd.key) as key:  # for the page's SSH terminal, where cra-cloud logs in with it
                configurations.append({"name": "ssh-terminal", "hostname": "127.0.0.1", "port": sshd.port, "protocol": "SSH",
                                       "credentialsType": "KEY_PAIR",
                                       "credentials": {"username": sshd.user, "privateKey": key.read()}})
        desktop = start_target(VirtualDesktop(workdir, VNC_PASSWORD), "VNC desktop", notes)
        if desktop:
            configurations.append({"name": "desktop", "hostname": "127.0.0.1", "port": desktop.port, "protocol": "VNC",
                                   "credentialsType": "PASS_ONLY", "credentials": {"password": VNC_PASSWORD}})
        telnetd = start_target(TelnetServer(workdir), "telnet", notes)
        if telnetd:
            configurations.append({"name": "console", "hostname": "127.0.0.1", "port": telnetd.port, "protocol": "TELNET"})
        seed_path = os.path.join(workdir, "seed.json")
        with open(seed_path, "w") as handle:
            json.dump(seed(configurations), handle)
        procs.append(start([sys.executable, "-m", "cra.cloud", "--port", str(port), "--seed", seed_path,
                            "--certfile", certfile, "--keyfile", keyfile], workdir, "cloud"))
        url = first_line(procs[-1], workdir, "cloud", r"listening on (\S+)")
        agent_conf = os.path.join(workdir, "agent.conf")
        with open(agent_conf, "w") as handle:
            handle.write(f"[c8y]\nurl = {url}\nca_file = {ca_file}\ntenant = t100\nuser = {DEVICE['user']}\n"
                         f"external_id = gw-001\n[agent]\npoll_interval = 1\n")
        procs.append(start([os.path.join(BIN, "cra-agent"), "--foreground", "-c", agent_conf], workdir, "agent",
                           {"CRA_C8Y_PASSWORD": DEVICE["password"]}))
        user_env = {"C8Y_HOST": url, "C8Y_USER": ADMIN["user"], "C8Y_PASSWORD": ADMIN["password"], "CRA_C8Y_CA_FILE": ca_file}
        ports = {}
        for config in (c for c in configurations if c["protocol"] == "PASSTHROUGH"):  # the others open in the page
            name = f"connect-{config['name']}"
            procs.append(start([os.path.join(BIN, "cra-connect"), "--device", "gw-001", "--config", config["name"],
                                "--port", "0"], workdir, name, user_env))
            ports[config["name"]] = first_line(procs[-1], workdir, name, r"listening on 127\.0\.0\.1:(\d+)")
        print(f"""
browser      {url}/apps/remote-access/  sign in as admin / admin-pw; the sessions open there
             (the browser does not know the demo's authority, {ca_file}: accept its warning, or import it)
cra-cloud    {url}  tenant t100, user admin / admin-pw (device gw-001: device_gw-001 / dev-pw);
             its certificate is from a local authority, {ca_file}: trust it with curl --cacert,
             cra-connect --ca-file or CRA_C8Y_CA_FILE, the agent's [c8y] ca_file
               $ {shlex.join(["curl", "--cacert", ca_file, "-u", "t100/admin:admin-pw", url + "/user/currentUser"])}
cra-agent    device gw-001, operations by real-time notification (polling every second when unavailable)
web page     127.0.0.1:{web.port}, reached through cra-connect on port {ports['web']}:
               $ curl http://127.0.0.1:{ports['web']}/""")
        if sshd:
            proxy = shlex.join(["env", *(f"{k}={v}" for k, v in user_env.items()), os.path.join(BIN, "cra-connect"),
                                "--stdio", "--device", "gw-001", "--config", "ssh"])
            print(f"""sshd         127.0.0.1:{sshd.port}, reached through cra-connect on port {ports['ssh']}:
               $ {shlex.join(["ssh", "-p", ports['ssh'], *sshd.client_options(), f"{sshd.user}@127.0.0.1"])}
             or with cra-connect as ssh's ProxyCommand, no listener:
               $ {shlex.join(["ssh", *sshd.client_options(), "-o", f"ProxyCommand={proxy}", f"{sshd.user}@gw-001"])}""")
            print("             and in the browser: configuration ssh-terminal (cra-cloud logs in with the demo's key)")
        else:
            print("sshd         not installed (apt-get install openssh-server), so no SSH demo")
        if desktop:
            print(f"VNC desktop  127.0.0.1:{desktop.port} (x11vnc on Xvfb :{desktop.display}): configuration desktop in the "
                  f"browser, VNC password {VNC_PASSWORD}")
        if telnetd:
            print(f"telnet       127.0.0.1:{telnetd.port} (busybox telnetd, a shell as {getpass.getuser()}): "
                  "configuration console in the browser")
        for note in notes:
            print(note)
        print(f"files        {workdir}: logs, keys and certificates, removed when the demo stops\n"
              f"Ctrl-C stops everything.", flush=True)
        stop.wait()
        print("\ncra-demo: stopping cra-connect, cra-agent, cra-cloud and the services", flush=True)
    finally:
        stop_all(procs)
        for target in (sshd, desktop, telnetd):
            if target:
                target.stop()
        web.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
