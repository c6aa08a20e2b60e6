"""SSH configurations: cra-cloud is the SSH client, as the platform's microservice is.

A client of an SSH configuration does not get the target's bytes. Once the device has joined
the session, cra-cloud runs SSH over the device leg (asyncssh, on one end of a socket pair whose
other end is copied to and from the device's WebSocket), logs in with the configuration's stored
credentials, checks the target's host key against the configuration's `credentials.hostKey`
(the tenant option remoteaccess/hostkey-autosave, true unless set, saves the first key it meets),
and gives the client a terminal: a PTY running the login shell. Its output goes to the client in
binary frames; the client's binary frames are typed into it; a client text frame
`{"resize": {"cols": C, "rows": R}}` sets its size. Every failure here is a sentence a person
can act on; the relay sends it to the client before the close (relay.py `_end`).
"""
import asyncio
import json
import logging
import socket
import time
from contextlib import suppress

import asyncssh
from aiohttp import WSMsgType

from cra.cloud.configurations import save_host_key
from cra.cloud.endings import Ending, ending_of
from cra.cloud.errors import unprocessable
from cra.cloud.tenant import hostkey_autosave
from cra.cloud.vault import VaultError

log = logging.getLogger("cra.cloud")
logging.getLogger("asyncssh").setLevel(logging.WARNING)  # its INFO lines name every channel; ours name the session

TERM_TYPE = "xterm-256color"
DEFAULT_SIZE = (80, 24)  # cols, rows
MAX_SIZE = 1000
READ_SIZE = 64 * 1024
INBOX_SIZE = 16  # client frames held while the login runs; then the client waits (TCP)
FIRST_BYTES = 64  # what the target said first, kept to tell a service that is not SSH


def terminal_size(query):
    """(cols, rows) from a client's query parameters `cols` and `rows`, DEFAULT_SIZE for those not given;
    422 before the upgrade for a value that is not a size."""
    size = []
    for name, default in zip(("cols", "rows"), DEFAULT_SIZE):
        value = query.get(name, str(default))
        if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_SIZE):
            raise unprocessable("remoteaccess", f'"{name}" must be a whole number from 1 to {MAX_SIZE}, not {value!r}')
        size.append(int(value))
    return tuple(size)


def resize_of(text):
    """(cols, rows) from a client's text frame, or None when it is not a resize message."""
    try:
        resize = json.loads(text)["resize"]
        cols, rows = resize["cols"], resize["rows"]
    except (ValueError, TypeError, KeyError):
        return None
    if all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_SIZE for n in (cols, rows)):
        return cols, rows
    return None


async def run(session, store, vault, login_timeout):
    """The terminal of one session, from the client's first frame to its end; the Ending. The SSH login,
    from the device's joining to a shell, has `login_timeout` s: the operation timeout's (ours)."""
    inbox = asyncio.Queue(INBOX_SIZE)
    reader = asyncio.ensure_future(_read_client(session, inbox))
    terminal = asyncio.ensure_future(_terminal(session, store, vault, inbox, login_timeout))
    try:
        done, _ = await asyncio.wait((reader, terminal), return_when=asyncio.FIRST_COMPLETED)
        return terminal.result() if terminal in done else reader.result()
    finally:
        for task in (reader, terminal):
            task.cancel()
        await asyncio.gather(reader, terminal, return_exceptions=True)


async def _read_client(session, inbox):
    """The client's frames into the inbox, from the start (a client may type, resize or leave while the
    login runs); returns the Ending when the client closes, drops or sends what is not a terminal's."""
    client = session.sides["client"][0]
    while True:
        message = await client.receive()
        if message.type is WSMsgType.BINARY:
            await inbox.put(("input", message.data))
        elif message.type is WSMsgType.TEXT:
            size = resize_of(message.data)
            if size is None:
                return Ending("client", 1003, 'the client sent a text frame that is not {"resize": {"cols": C, "rows": R}} '
                                              f"with sizes from 1 to {MAX_SIZE}; keystrokes go in binary frames")
            await inbox.put(("resize", size))
        else:
            return ending_of("client", message)


class _Refused(Exception):
    """What stops a terminal before it starts, in one sentence for the person at the page."""


class _HostKeyCheck(asyncssh.SSHClient):
    """Asked by asyncssh about a key the configuration does not hold: accepted only when it holds none
    and the tenant saves first keys; the key is kept for the sentence or for saving."""

    def __init__(self, stored, autosave):
        self.stored, self.autosave, self.presented = stored, autosave, None

    def validate_host_public_key(self, host, addr, port, key):
        self.presented = key
        return self.stored is None and self.autosave


class _DeviceLeg:
    """The device's WebSocket as a byte stream for asyncssh: copied to and from one end of a socket pair."""

    def __init__(self, session, sock):
        self.session, self.sock = session, sock
        self.device = session.sides["device"][0]
        self.ended = None  # the device's Ending, when it left first
        self.first_bytes = b""

    async def from_device(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await self.device.receive()
                if message.type is WSMsgType.BINARY:
                    if len(self.first_bytes) < FIRST_BYTES:
                        self.first_bytes += message.data[:FIRST_BYTES - len(self.first_bytes)]
                    await loop.sock_sendall(self.sock, message.data)
                    self.session.last_activity = time.monotonic()
                elif message.type is WSMsgType.TEXT:
                    self.ended = Ending("device", 1003, "the device sent a text frame; the tunnel carries binary frames only")
                    return
                else:
                    self.ended = ending_of("device", message)
                    return
        except OSError:  # asyncssh has closed its end
            pass
        finally:
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)  # asyncssh sees the end of the stream

    async def to_device(self):
        loop = asyncio.get_running_loop()
        with suppress(OSError, ConnectionError):
            while data := await loop.sock_recv(self.sock, READ_SIZE):
                await asyncio.shield(self.device.send_bytes(data))  # see relay.py _pump
                self.session.last_activity = time.monotonic()


async def _terminal(session, store, vault, inbox, login_timeout):
    await session.device_joined
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    leg = _DeviceLeg(session, theirs)
    copies = [asyncio.ensure_future(leg.from_device()), asyncio.ensure_future(leg.to_device())]
    conn = None
    try:
        try:
            conn = await _login(session, store, vault, ours, leg, login_timeout)
        except _Refused as refusal:
            return Ending("ssh", 1011, str(refusal))
        process = await conn.create_process(term_type=TERM_TYPE, term_size=session.terminal_size,
                                            request_pty="force", encoding=None)
        return await _carry(session, process, inbox, leg)
    except (asyncssh.Error, OSError) as exc:  # the connection broke after the login
        return leg.ended or Ending("ssh", 1011, f"the SSH connection to {_target(session)} broke: {_words(exc)}")
    finally:
        if conn is not None:
            conn.abort()
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
        ours.close()
        theirs.close()


async def _login(session, store, vault, sock, leg, login_timeout):
    """The logged-in connection, its host key checked (and saved, on a first use the tenant allows); or _Refused."""
    config, target = session.config, _target(session)
    options = _credentials(config, vault)
    stored = _stored_host_key(config)
    check = _HostKeyCheck(stored, hostkey_autosave(store, session.tenant))
    try:
        conn = await asyncssh.connect(
            config["hostname"], config["port"], sock=sock, client_factory=lambda: check,
            known_hosts=([stored] if stored else [], [], []), x509_trusted_certs=None, config=None, agent_path=None,
            gss_auth=False, gss_kex=False, host_based_auth=False, login_timeout=login_timeout, **options)
    except asyncssh.PermissionDenied:
        what = "password" if config["credentialsType"] == "USER_PASS" else "key"
        advice = ("correct it in the configuration" if what == "password" else
                  f"put its public key in the authorized_keys of {options['username']} on the target, or correct the configuration")
        raise _Refused(f"SSH authentication failed for user {options['username']}: the configuration's {what} "
                       f"was refused by {target}; {advice}") from None
    except asyncssh.HostKeyNotVerifiable:
        raise _Refused(_host_key_sentence(target, stored, check.presented)) from None
    except asyncssh.KeyExchangeFailed as exc:
        if stored is not None:  # the target offers no key of the stored key's type
            raise _Refused(_host_key_sentence(target, stored, None)) from None
        raise _Refused(f"the SSH key exchange with {target} failed: {_words(exc)}") from None
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
        raise _Refused(_handshake_sentence(target, exc, leg, login_timeout)) from None
    presented = conn.get_server_host_key()
    if stored is None and presented is not None:
        line = _openssh_line(presented)
        if save_host_key(store, vault, session.tenant, session.device_id, config["id"], line):
            log.info("session %d: host key of %s saved in configuration %s (hostkey-autosave): %s %s", session.number,
                     target, config["id"], presented.algorithm.decode(), presented.get_fingerprint("sha256"))
    return conn


def _credentials(config, vault):
    """asyncssh's options for the configuration's credentials; _Refused when they cannot log in anyone."""
    kind, public = config.get("credentialsType", "NONE"), config.get("credentials") or {}
    if kind not in ("USER_PASS", "KEY_PAIR"):
        raise _Refused(f"the configuration's credentialsType is {kind}: the platform logs in to SSH with USER_PASS "
                       "(username and password) or KEY_PAIR (username and private key); change the configuration")
    username = public.get("username")
    if not username:
        raise _Refused("the configuration has no username to log in with; add one (credentials.username)")
    try:
        secrets = vault.open(config["sealed_secrets"]) if config.get("sealed_secrets") else {}
    except VaultError as exc:
        raise _Refused(f"the configuration's credentials cannot be read ({exc}); provide them again") from None
    if kind == "USER_PASS":
        if not secrets.get("password"):
            raise _Refused("the configuration has no password; provide it again (credentials.password)")
        return {"username": username, "password": secrets["password"], "client_keys": None,
                "preferred_auth": "keyboard-interactive,password"}
    if not secrets.get("privateKey"):
        raise _Refused("the configuration has no private key; provide it again (credentials.privateKey)")
    try:
        key = asyncssh.import_private_key(secrets["privateKey"])
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise _Refused(f"the configuration's private key cannot be read ({exc}); give it in OpenSSH or PEM form, "
                       "without a passphrase") from None
    return {"username": username, "client_keys": [key], "password": None, "preferred_auth": "publickey"}


def _stored_host_key(config):
    line = ((config.get("credentials") or {}).get("hostKey") or "").strip()
    if not line:
        return None
    try:
        return asyncssh.import_public_key(line)
    except asyncssh.KeyImportError as exc:
        raise _Refused(f"the configuration's host key cannot be read ({exc}); give the target's public host key as one "
                       "OpenSSH line, e.g. 'ssh-ed25519 AAAA...', or remove it") from None


def _host_key_sentence(target, stored, presented):
    if stored is None:
        seen = f"; the target presented {_describe(presented)}" if presented else ""
        return (f"the host key of {target} is not known: the configuration has none and the tenant option "
                f"remoteaccess/hostkey-autosave is false{seen}; if that is the target's key, put it in the "
                f"configuration's hostKey, or set the option to true")
    got = presented.get_fingerprint("sha256") if presented else f"no {stored.algorithm.decode()} key"
    return (f"the host key of {target} changed: expected {stored.get_fingerprint('sha256')}, got {got} "
            f"({stored.algorithm.decode()}); if the target's key was replaced on purpose, put the new one in the "
            f"configuration's hostKey, otherwise do not connect: someone may be in between")


def _handshake_sentence(target, exc, leg, login_timeout):
    if leg.ended is not None and leg.ended.code != 1000:
        return leg.ended.told or leg.ended.reason  # the agent's own words, e.g. it cannot reach the target
    if isinstance(exc, asyncio.TimeoutError) or "timeout" in str(exc).lower():  # asyncssh: 'Login timeout expired'
        return (f"{target} did not complete the SSH login within {login_timeout:g} s (remoteaccess.operation.timeout); "
                f"check that an SSH server answers there")
    first = leg.first_bytes.split(b"\n")[0].strip()
    if first and not first.startswith(b"SSH-"):
        return (f"{target} does not speak SSH: it began with {first.decode('utf-8', 'replace')!r}; check the "
                f"configuration's port, or use a PASSTHROUGH configuration for other services")
    return f"the SSH handshake with {target} failed: {_words(exc)}; check that an SSH server listens there"


async def _carry(session, process, inbox, leg):
    """Terminal output to the client, the inbox to the terminal, until the shell exits or the leg ends."""
    client = session.sides["client"][0]

    async def output():
        while data := await process.stdout.read(READ_SIZE):
            await asyncio.shield(client.send_bytes(data))
            session.bytes["device"] += len(data)
            session.last_activity = time.monotonic()
        await process.wait_closed()
        if process.exit_status is not None:
            return Ending("target", 1000, f"the shell exited (status {process.exit_status})")
        if process.exit_signal is not None:
            return Ending("target", 1000, f"the shell ended by signal {process.exit_signal[0]}")
        return leg.ended or Ending("target", 1000, "the SSH session ended")

    async def typing():
        while True:
            kind, value = await inbox.get()
            if kind == "resize":
                process.change_terminal_size(*value)
            else:
                process.stdin.write(value)
                await process.stdin.drain()
                session.bytes["client"] += len(value)
                session.last_activity = time.monotonic()

    tasks = [asyncio.ensure_future(output()), asyncio.ensure_future(typing())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _target(session):
    return f"{session.config['hostname']}:{session.config['port']}"


def _openssh_line(key):
    """The key as the platform keeps it: one OpenSSH line, type and base64, no comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _describe(key):
    return f"{key.algorithm.decode()} {key.get_fingerprint('sha256')}"


def _words(exc):
    return str(exc) or type(exc).__name__
