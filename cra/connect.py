"""cra-connect: a user's local proxy into a device's remote access configuration.

Each connection (a local TCP connection in --port mode, or this process's standard input and
output in --stdio mode, for ssh's ProxyCommand) gets its own client WebSocket, and so its own
operation and session on the platform; the bytes are carried by the agent's Tunnel, with the
local connection as its endpoint. Every failure a user can meet has its own exit code.
"""
import argparse
import getpass
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace

from cra import __version__
from cra.c8y import MISSING_ROLE, NOT_SUBSCRIBED, PLATFORM_RUNS_SSH, C8y, CloudError, CloudUnreachable
from cra.config import CloudAccess, env_name
from cra.endpoint import StdioEndpoint, TcpEndpoint
from cra.errors import AgentError
from cra.tunnel import Tunnel
from cra.websocket_leg import WebSocketLegError, open_websocket

log = logging.getLogger("cra.connect")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_CREDENTIALS, EXIT_ROLE, EXIT_NO_DEVICE, EXIT_NO_CONFIGURATION, EXIT_DEVICE_ABSENT = 3, 4, 5, 6, 7
ENVIRONMENT = {"url": "C8Y_HOST", "tenant": "C8Y_TENANT", "user": "C8Y_USER", "password": "C8Y_PASSWORD", "token": "C8Y_TOKEN"}
CA_FILE_ENVIRONMENT = env_name("c8y", "ca_file")  # the agent's own name for it: one variable serves both
CONNECT_TIMEOUT = 30
PING_INTERVAL = 30
STOP_WAIT = 3.0
SIGNAL_POLL = 0.5  # s: how often the listener and the signal wait look up
STOPS = {signal.SIGTERM: (1001, "cra-connect is stopping"), signal.SIGINT: (1001, "cra-connect is stopping"),
         signal.SIGHUP: (1000, "cra-connect was hung up on: the program that started it ended")}
CLIENT_REFUSALS = {
    401: "credentials rejected: check the tenant, user and password, or the token",
    403: MISSING_ROLE,
    404: "the device or configuration is gone",
}


class Failure(AgentError):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cra-connect", description="Reach a device's remote access configuration through a local port or stdin/stdout.",
        epilog="Credentials may come from the environment instead: " + ", ".join(ENVIRONMENT.values()) +
               ". Without a password or token, cra-connect asks for the password on the terminal. "
               "Exit codes: 0 done, 1 other error, 2 usage, 3 credentials rejected, 4 missing role, "
               "5 device not found, 6 configuration not found or of protocol SSH, 7 the device did not connect.")
    parser.add_argument("--device", required=True, help="managed object id, or external id (c8y_Serial)")
    parser.add_argument("--config", help="configuration name or id; default: the device's only PASSTHROUGH one")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--port", type=_port, help="listen on this local port (0: any free one, printed)")
    mode.add_argument("--stdio", action="store_true", help="carry one session over stdin/stdout (ssh ProxyCommand)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on with --port (default: %(default)s)")
    parser.add_argument("--url", help="the tenant's URL, e.g. https://t100.cumulocity.com (or C8Y_HOST)")
    parser.add_argument("--tenant", help="tenant id (or C8Y_TENANT); default: the one the URL's login options name")
    parser.add_argument("--user", help="user name (or C8Y_USER)")
    parser.add_argument("--password", help="password (or C8Y_PASSWORD; visible to other users in the process list)")
    parser.add_argument("--token", help="a Bearer token instead of user and password (or C8Y_TOKEN)")
    parser.add_argument("--ca-file", help=f"PEM file of the certificate authorities to trust instead of the system's "
                                          f"(or {CA_FILE_ENVIRONMENT})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each connection and debug detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _port(text):
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text!r}")
    return int(text)


def cloud_access(args, environ):
    """Where and who, from the flags and then the environment; the tenant, when not given, from the
    tenant's own login options (as c8ylp finds it), and the password, when not given, from the terminal."""
    values = {key: getattr(args, key) or environ.get(name, "") for key, name in ENVIRONMENT.items()}
    url = values.pop("url").rstrip("/")
    if url and "://" not in url:
        url = "https://" + url  # a tenant is only ever https
    if not url.startswith(("http://", "https://")):
        raise Failure(EXIT_USAGE, "give the tenant's URL with --url or C8Y_HOST, e.g. https://t100.cumulocity.com")
    ca_file = args.ca_file or environ.get(CA_FILE_ENVIRONMENT, "")
    if ca_file and not os.path.isfile(ca_file):
        raise Failure(EXIT_USAGE, f"no such CA file: {ca_file}")
    access = CloudAccess(url=url, ca_file=ca_file, **values)
    if access.token:
        return access
    if not access.user:
        raise Failure(EXIT_USAGE, "give --user (or C8Y_USER), or a --token")
    if not access.tenant:
        access = replace(access, tenant=_login_tenant(access))
    if not access.password:
        access = replace(access, password=_ask_password(access))
    return access


def _login_tenant(access):
    try:
        tenant = C8y(access).login_tenant()
    except (CloudError, CloudUnreachable) as exc:
        raise Failure(EXIT_ERROR, f"cannot read the tenant id from the login options: {exc}; "
                                  f"give --tenant or C8Y_TENANT") from None
    if not tenant:
        raise Failure(EXIT_USAGE, f"{access.url} does not say which tenant it is: give --tenant or C8Y_TENANT")
    return tenant


def _ask_password(access):
    try:
        with open("/dev/tty"):
            pass
    except OSError:
        raise Failure(EXIT_USAGE, "no password: give C8Y_PASSWORD or --password (there is no terminal to ask on)") from None
    return getpass.getpass(f"password for {access.tenant}/{access.user}: ")


def find_target(c8y, device, config):
    """(device id, configuration) named on the command line, or the Failure that says what is missing."""
    try:
        device_id = _device_id(c8y, device)
        configs = c8y.configurations(device_id)
    except CloudError as exc:
        if exc.status == 401:
            raise Failure(EXIT_CREDENTIALS, "credentials rejected (401): check the tenant, user and password, or the token") from None
        if exc.status == 403:
            raise Failure(EXIT_ROLE, f"access denied (403): {MISSING_ROLE}") from None
        if exc.status == 404:  # the device was found: it is its remote access that is not there
            raise Failure(EXIT_ERROR, f"remote access refused (404): {NOT_SUBSCRIBED}") from None
        raise Failure(EXIT_ERROR, str(exc)) from None
    except CloudUnreachable as exc:
        raise Failure(EXIT_ERROR, str(exc)) from None
    names = ", ".join(f"{c.get('name')} ({c['id']})" for c in configs) or "none"
    if config is None:
        passthrough = [c for c in configs if c.get("protocol") == "PASSTHROUGH"]
        if len(passthrough) != 1:
            raise Failure(EXIT_NO_CONFIGURATION, f"device {device} has {len(passthrough)} PASSTHROUGH configurations; "
                                                 f"choose one with --config: {names}")
        return device_id, passthrough[0]
    for candidate in configs:
        if config in (candidate.get("name"), str(candidate["id"])):
            if candidate.get("protocol") == "SSH":
                raise Failure(EXIT_NO_CONFIGURATION, f"configuration {candidate.get('name')!r} ({candidate['id']}) "
                                                     f"on device {device} cannot be used here: {PLATFORM_RUNS_SSH}")
            return device_id, candidate
    raise Failure(EXIT_NO_CONFIGURATION, f"configuration {config!r} not found on device {device}; it has: {names}")


def _device_id(c8y, device):
    if device.isascii() and device.isdigit():
        try:
            return c8y.device(device)["id"]
        except CloudError as exc:
            if exc.status != 404:
                raise
    device_id = c8y.find_device(device)
    if device_id is None:
        raise Failure(EXIT_NO_DEVICE, f"device {device} not found: neither a managed object id nor a c8y_Serial external id")
    return device_id


class Connector:
    """Opens a tunnel for each local connection; remembers the open ones so a signal can close them."""

    def __init__(self, access, device_id, config):
        self._access = access
        self._path = f"/service/remoteaccess/client/{device_id}/configurations/{config['id']}"
        self._lock = threading.Lock()
        self._tunnels = set()
        self._stopped_by = None

    def carry(self, endpoint, name):
        """Carry one connection to its end; returns the Tunnel, or raises Failure when none could open."""
        try:
            ws = open_websocket(self._access, self._path, CONNECT_TIMEOUT, CLIENT_REFUSALS)
        except WebSocketLegError as exc:
            endpoint.close()
            code = {401: EXIT_CREDENTIALS, 403: EXIT_ROLE, 404: EXIT_NO_CONFIGURATION}.get(exc.status, EXIT_ERROR)
            raise Failure(code, str(exc)) from None
        tunnel = Tunnel(endpoint, ws, name, PING_INTERVAL)
        with self._lock:
            self._tunnels.add(tunnel)
            if self._stopped_by:
                tunnel.stop(*self._stopped_by)
        try:
            tunnel.run()
        finally:
            with self._lock:
                self._tunnels.discard(tunnel)
        return tunnel

    @property
    def stopped(self):
        return self._stopped_by is not None

    def stop(self, code, reason):
        """Close every tunnel with this close code and reason, and any that opens from now on."""
        with self._lock:
            self._stopped_by = (code, reason)
            tunnels = list(self._tunnels)
        for tunnel in tunnels:
            tunnel.stop(code, reason)


def device_absent(tunnel):
    """The Failure when the device gave no tunnel: the cloud closed with 1011 before a byte came back,
    either because the agent never came (the platform's timeout) or because it could not reach the target."""
    if tunnel.cloud_close and tunnel.cloud_close[0] == 1011 and tunnel.received == 0:
        return Failure(EXIT_DEVICE_ABSENT, f"the device did not connect the tunnel: {tunnel.cloud_close[1] or 'no reason given'}")
    return None


def until_stopped(connector, serve):
    """serve() on a thread of its own, while this one takes the signals with sigtimedwait (blocked in
    every thread): no handler ever runs inside a thread that holds a lock the stop needs, so every stop
    is taken (issue 13). ssh sends SIGHUP to its ProxyCommand when its session ends: a normal end.
    serve()'s exit code, or the Failure it raised."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(STOPS))
    outcome = []

    def work():
        try:
            outcome.append(serve())
        except Failure as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work, name="serve", daemon=True)
    worker.start()
    while worker.is_alive():
        received = signal.sigtimedwait(set(STOPS), SIGNAL_POLL)
        if received:
            connector.stop(*STOPS[received.si_signo])
            break
    worker.join(STOP_WAIT + SIGNAL_POLL)
    if outcome and isinstance(outcome[0], Failure):
        raise outcome[0]
    return outcome[0] if outcome else EXIT_OK


def serve_stdio(connector):
    def serve():
        tunnel = connector.carry(StdioEndpoint(), "stdio")
        failure = device_absent(tunnel)
        if failure:
            raise failure
        log.debug("session ended: %s", tunnel.reason)
        return EXIT_OK
    return until_stopped(connector, serve)


def serve_port(connector, bind, port, describe):
    try:
        server = socket.create_server((bind, port))
    except OSError as exc:
        raise Failure(EXIT_ERROR, f"cannot listen on {bind}:{port}: {exc.strerror}") from None
    server.settimeout(SIGNAL_POLL)
    print(f"cra-connect: listening on {bind}:{server.getsockname()[1]} for {describe}", flush=True)

    def serve():
        sessions = []
        with server:
            while not connector.stopped:
                try:
                    conn, peer = server.accept()
                except socket.timeout:
                    continue
                thread = threading.Thread(target=_serve_one, args=(connector, conn, peer), daemon=True)
                sessions = [t for t in sessions if t.is_alive()] + [thread]
                thread.start()
        deadline = time.monotonic() + STOP_WAIT
        for thread in sessions:
            thread.join(max(0, deadline - time.monotonic()))
        return EXIT_OK
    return until_stopped(connector, serve)


def _serve_one(connector, conn, peer):
    name = f"{peer[0]}:{peer[1]}"
    started = time.monotonic()
    try:
        tunnel = connector.carry(TcpEndpoint(conn, name), name)
    except Failure as exc:
        log.error("connection from %s: %s", name, exc)
        return
    failure = device_absent(tunnel)
    if failure:
        log.error("connection from %s: %s", name, failure)
    else:
        log.info("connection from %s closed: %d bytes sent, %d bytes received, %.1f s: %s",
                 name, tunnel.sent, tunnel.received, time.monotonic() - started, tunnel.reason)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="cra-connect: %(message)s")
    try:
        access = cloud_access(args, os.environ)
        device_id, config = find_target(C8y(access), args.device, args.config)
        connector = Connector(access, device_id, config)
        if args.stdio:
            return serve_stdio(connector)
        describe = f"device {args.device}, configuration {config.get('name')} ({config.get('hostname')}:{config.get('port')})"
        return serve_port(connector, args.bind, args.port, describe)
    except Failure as exc:
        print(f"cra-connect: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C before a tunnel was up: nothing to close
        return 130
