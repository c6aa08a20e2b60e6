"""What `make run` (and the tests) put behind the gateway, from Debian's packages: a real OpenSSH
server, a VNC server on a virtual display (Xvfb, x11vnc, with a coloured root window and an xterm
on it) and a telnet server (busybox's telnetd). Each says which packages it lacks rather
than failing, all listen on 127.0.0.1 only, and stop() ends every process they started.
"""
import getpass
import os
import select
import shutil
import signal
import socket
import subprocess
import time

SSHD = "/usr/sbin/sshd"
# The program each needs, and the Debian package that has it.
DESKTOP_PROGRAMS = {"Xvfb": "xvfb", "x11vnc": "x11vnc", "xsetroot": "x11-xserver-utils", "xterm": "xterm"}
BUSYBOX = "busybox"  # with the telnetd applet: Debian's busybox-static has it, its busybox does not
START_TIMEOUT = 15


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, proc, what, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout} s")


class LocalSshd:
    """A real OpenSSH server, run as the current user on 127.0.0.1 with host and user keys of its own.

    `password_users`: system users who may also log in with their password (sshd must run as root
    to check one: it reads /etc/shadow itself, without PAM)."""

    def __init__(self, workdir, password_users=()):
        self.dir = os.path.join(workdir, "sshd")
        self.user = getpass.getuser()
        self.password_users = list(password_users)
        self.key = os.path.join(self.dir, "user_ed25519")
        self.port = None
        self.proc = None

    @staticmethod
    def available():
        return os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen") is not None

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        host_key = os.path.join(self.dir, "host_ed25519")
        for key in (host_key, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        shutil.copy(self.key + ".pub", os.path.join(self.dir, "authorized_keys"))
        self.port = free_port()
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as handle:
            handle.write(f"""ListenAddress 127.0.0.1:{self.port}
HostKey {host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
AllowUsers {" ".join([self.user, *self.password_users])}
PubkeyAuthentication yes
PasswordAuthentication {"yes" if self.password_users else "no"}
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with open(os.path.join(self.dir, "sshd.log"), "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=log, stderr=log)
        wait_for_port(self.port, self.proc, "sshd")
        return self

    @property
    def host_key_line(self):
        """The server's public host key as one OpenSSH line (type and base64), as a configuration keeps it."""
        with open(os.path.join(self.dir, "host_ed25519.pub")) as handle:
            return " ".join(handle.read().split()[:2])

    def client_options(self):
        """ssh/scp options that log in with the demo's key and trust the demo's throwaway host key."""
        return ["-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def stop_all(procs):
    """SIGTERM to each, the last started first; killed when one has not ended 10 s on."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class VirtualDesktop:
    """A virtual display (Xvfb) with a VNC server on it (x11vnc, password-protected, 127.0.0.1 only):
    the root window in `background`, and an xterm at the top left in `window_background` that runs
    `command` (a shell's command line), so that what is typed over VNC lands somewhere."""

    def __init__(self, workdir, password, background="#2e7d32", window_background="#ffb300",
                 command="exec sh", size=(800, 600)):
        self.dir = os.path.join(workdir, "desktop")
        self.password, self.background, self.window_background = password, background, window_background
        self.command, self.size = command, size
        self.display = self.port = None
        self._procs = []

    @staticmethod
    def missing():
        """The Debian packages to install before a desktop can start; none when it can."""
        return sorted({package for program, package in DESKTOP_PROGRAMS.items() if not shutil.which(program)})

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        try:
            self._start_display()
            env = {**os.environ, "DISPLAY": f":{self.display}"}
            # -noreset: the root keeps its colour when xsetroot, then the only client, disconnects.
            subprocess.run(["xsetroot", "-solid", self.background], env=env, check=True, timeout=START_TIMEOUT)
            self._run(["xterm", "-geometry", "60x12+0+0", "-bg", self.window_background, "-fg", "black",
                       "-e", "sh", "-c", self.command], "xterm", env)
            passwd = os.path.join(self.dir, "passwd")
            subprocess.run(["x11vnc", "-storepasswd", self.password, passwd], check=True, timeout=START_TIMEOUT,
                           capture_output=True)
            self.port = free_port()
            vnc = self._run(["x11vnc", "-display", f":{self.display}", "-rfbport", str(self.port), "-localhost",
                             "-rfbauth", passwd, "-forever", "-shared", "-noxdamage", "-quiet"], "x11vnc")
            wait_for_port(self.port, vnc, "x11vnc")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_display(self):
        """Xvfb on the first free display number, which it names itself (-displayfd)."""
        read, write = os.pipe()
        try:
            self._run(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{self.size[0]}x{self.size[1]}x24",
                       "-nolisten", "tcp", "-noreset"], "Xvfb", pass_fds=(write,))
            os.close(write)
            write = None
            self.display = int(self._read_within(read, START_TIMEOUT) or -1)
        finally:
            os.close(read)
            if write is not None:
                os.close(write)
        if self.display < 0:
            raise RuntimeError(f"Xvfb did not start; see {self.dir}/Xvfb.log")

    @staticmethod
    def _read_within(fd, timeout):
        text = b""
        deadline = time.monotonic() + timeout
        while not text.endswith(b"\n") and time.monotonic() < deadline:
            if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(fd, 16)
                if not chunk:
                    break
                text += chunk
        return text.strip()

    def _run(self, command, name, env=None, **options):
        with open(os.path.join(self.dir, f"{name}.log"), "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, **options)
        self._procs.append(proc)
        return proc

    def stop(self):
        stop_all(self._procs)


class TelnetServer:
    """busybox telnetd on 127.0.0.1, running `login` (a program) for each connection, with `issue` as
    the greeting."""

    def __init__(self, workdir, login="/bin/sh", issue="cra demo telnet target\n"):
        self.dir = os.path.join(workdir, "telnetd")
        self.login, self.issue = login, issue
        self.port = None
        self._procs = []

    @staticmethod
    def missing():
        """The Debian package to install for busybox's telnetd; none when it is there."""
        busybox = shutil.which(BUSYBOX)
        if busybox:
            listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, timeout=10).stdout.split()
            if "telnetd" in listed:
                return []
        return ["busybox-static"]

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        issue = os.path.join(self.dir, "issue")
        with open(issue, "w") as handle:
            handle.write(self.issue)
        self.port = free_port()
        with open(os.path.join(self.dir, "telnetd.log"), "ab") as log:
            proc = subprocess.Popen([BUSYBOX, "telnetd", "-F", "-K", "-b", f"127.0.0.1:{self.port}", "-l", self.login,
                                     "-f", issue], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        wait_for_port(self.port, proc, "busybox telnetd")
        return self

    def stop(self):
        stop_all(self._procs)
