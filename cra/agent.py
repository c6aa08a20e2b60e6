"""The agent: registers the device, then polls for c8y_RemoteAccessConnect operations and gives
each its own thread, so that a slow connect or a long session never holds up another.

The poll loop outlives every failure of the network or the platform: it logs the failure (a
rejected password once, until it works again), waits with a backoff that doubles up to
max_backoff, and polls again; PENDING operations wait on the platform meanwhile, so none is lost.
A device with no credentials of its own first gets them through bootstrap registration.
"""
import logging
import threading
import time

from cra.bootstrap import WAITING, CredentialsFile, CredentialsFileError, bootstrap_access, device_access
from cra.c8y import C8y, CloudError, CloudUnreachable
from cra.endpoint import EndpointError, SerialPorts, open_tcp
from cra.operation import InvalidOperation, masked, parse
from cra.tunnel import Tunnel
from cra.websocket_leg import WebSocketLegError, open_device_websocket, tls_context

log = logging.getLogger("cra.agent")

PROTOCOLS = ["PASSTHROUGH", "SSH", "VNC", "TELNET"]
RESTART_REASON = "agent restarted; the session was lost"
STOP_WAIT = 3.0
WAITING_EVERY = 60.0
CONFIGURED_CREDENTIALS = "check [c8y] tenant, user and password (or token)"


class Agent:
    def __init__(self, config):
        self.config = config
        self._sign_in_with(config.cloud)
        self._serial_ports = SerialPorts(config.serial_ports)
        self.device_id = None
        self._ready = False
        self._signed_in = False
        self._rejection_hint = CONFIGURED_CREDENTIALS
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._handling = set()
        self._finished = set()
        self._tunnels = {}
        self._threads = []
        self._failures = 0
        self._credentials_reported = False

    def run(self):
        """Until shutdown(): start (again after a reload that needs it), then poll."""
        while not self._stop.is_set():
            ready = self._ready
            if not self._attempt(self._poll if ready else self._start):
                self._stop.wait(self._backoff())
            elif ready:
                self._stop.wait(self.config.poll_interval)

    def reload(self, config):
        """Take a re-read configuration; open tunnels go on as they are. A change of tenant, device
        or credentials signs in and registers again before the next poll."""
        restart = _identity(config) != _identity(self.config)
        self._serial_ports.remap(config.serial_ports)
        tls_context.cache_clear()  # a renewed CA file counts from the next tunnel on
        self.config = config
        if restart:
            self._sign_in_with(config.cloud)
            self._ready = self._signed_in = False
            self._rejection_hint = CONFIGURED_CREDENTIALS
        log.info("configuration reloaded%s", "; signing in and registering again" if restart else "")

    def shutdown(self):
        """Stop polling, close every tunnel with 1001, and cut what has not closed within STOP_WAIT.

        Called from another thread than run(), which may be inside a request that takes its time.
        """
        self._stop.set()
        with self._lock:
            tunnels = [t for t in self._tunnels.values() if t is not None]
        for tunnel in tunnels:
            tunnel.stop(1001, "the agent is stopping")
        deadline = time.monotonic() + STOP_WAIT
        for thread in list(self._threads):
            thread.join(max(0, deadline - time.monotonic()))
        for tunnel in tunnels:
            tunnel.cut()

    def _attempt(self, step):
        """Run one step against the cloud; False, with the reason logged, when the cloud failed it."""
        try:
            step()
        except (CloudError, CloudUnreachable, CredentialsFileError) as exc:
            self._failures += 1
            if isinstance(exc, CloudError) and exc.status == 401:
                if not self._credentials_reported:
                    log.error("credentials rejected by %s: %s; retrying every %g s at most",
                              self.config.cloud.url, self._rejection_hint, self.config.max_backoff)
                    self._credentials_reported = True
            elif isinstance(exc, CredentialsFileError):
                log.error("%s; retrying in %g s", exc, self._backoff())
            else:
                log.warning("%s; retrying in %g s", exc, self._backoff())
            return False
        if self._failures:
            log.info("the cloud answers again")
        self._failures, self._credentials_reported = 0, False
        return True

    def _backoff(self):
        return min(self.config.poll_interval * 2 ** max(self._failures - 1, 0), self.config.max_backoff)

    def _start(self):
        """Everything before the first poll; all of it again when a step fails."""
        self._sign_in()
        if self._stop.is_set():
            return
        self._register()
        self._fail_lost_sessions()
        self._ready = True

    def _sign_in(self):
        """In bootstrap mode, the device's own credentials: those stored, else new ones. Once signed
        in, they stay in use until a reload changes the configuration, also when they could not be stored."""
        if not self.config.bootstrapping or self._signed_in:
            return
        stored = CredentialsFile(self.config.bootstrap.credentials_file)
        credentials = stored.load()
        if credentials is None:
            stored.prepare()
            credentials = self._await_credentials(stored)
            if credentials is None:
                return
        self._sign_in_with(device_access(self.config, credentials))
        self._signed_in = True
        self._rejection_hint = (f"the device credentials in {stored.path} are no longer valid; the file is kept as "
                                f"it is: remove it to register the device again through bootstrap")

    def _sign_in_with(self, access):
        """REST calls and tunnels from now on: the configured credentials, or the device's own."""
        self.access = access
        self.c8y = C8y(access)

    def _await_credentials(self, stored):
        """Ask with the bootstrap user until an administrator accepts the device, then keep the
        answer; None when the agent stops first."""
        config = self.config
        bootstrap = C8y(bootstrap_access(config))
        self._rejection_hint = "check [bootstrap] user, password and tenant"
        told = None
        while not (credentials := bootstrap.device_credentials(config.external_id)):
            if told is None or time.monotonic() - told >= WAITING_EVERY:
                log.info("%s: register external id %s there (Devices > Registration) and accept it", WAITING, config.external_id)
                told = time.monotonic()
            if self._stop.wait(config.poll_interval):
                return None
        log.info("device credentials received: user %s of tenant %s", credentials["user"], credentials["tenant"])
        try:
            stored.save(credentials)
            log.info("device credentials stored in %s", stored.path)
        except CredentialsFileError as exc:
            log.error("%s: they are used until the agent stops, then lost; the device must then be registered again", exc)
        return credentials

    def _register(self):
        """Find or create the device by its c8y_Serial; make sure it offers remote access (WIRE.md section 2)."""
        config = self.config
        device_id = self.c8y.find_device(config.external_id)
        if device_id is None:
            device_id = self.c8y.create_device(config.external_id, {
                "name": config.device_name or config.external_id, "type": config.device_type,
                "c8y_IsDevice": {}, "com_cumulocity_model_Agent": {},
                "c8y_SupportedOperations": ["c8y_RemoteAccessConnect"],
                "c8y_RemoteAccessSupportedProtocols": PROTOCOLS})
            log.info("registered new device %s as managed object %s", config.external_id, device_id)
        else:
            current = self.c8y.device(device_id)
            supported = current.get("c8y_SupportedOperations")
            supported = supported if isinstance(supported, list) else []
            changes = {}
            if "c8y_RemoteAccessConnect" not in supported:
                changes["c8y_SupportedOperations"] = supported + ["c8y_RemoteAccessConnect"]
            if current.get("c8y_RemoteAccessSupportedProtocols") != PROTOCOLS:
                changes["c8y_RemoteAccessSupportedProtocols"] = PROTOCOLS
            if "com_cumulocity_model_Agent" not in current:
                changes["com_cumulocity_model_Agent"] = {}
            if changes:
                self.c8y.update_device(device_id, changes)
            log.info("device %s is managed object %s%s", config.external_id, device_id,
                     f"; updated {', '.join(sorted(changes))}" if changes else "")
        self.device_id = device_id

    def _fail_lost_sessions(self):
        for operation in self.c8y.connect_operations(self.device_id, "EXECUTING"):
            self.c8y.set_status(operation["id"], "FAILED", RESTART_REASON)
            log.info("operation %s set FAILED: %s", operation["id"], RESTART_REASON)

    def _poll(self):
        with self._lock:
            self._finished.clear()
        for operation in self.c8y.connect_operations(self.device_id, "PENDING"):
            op_id = str(operation.get("id"))
            with self._lock:
                # _finished: handled since this poll began, so possibly listed before its status changed
                if op_id in self._handling or op_id in self._finished:
                    continue
                self._handling.add(op_id)
            thread = threading.Thread(target=self._handle, args=(operation,), name=f"op-{op_id}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _handle(self, operation):
        op_id = str(operation.get("id"))
        try:
            self._connect(op_id, operation)
        except (CloudError, CloudUnreachable) as exc:
            log.warning("operation %s: %s", op_id, exc)
        finally:
            with self._lock:
                self._handling.discard(op_id)
                self._finished.add(op_id)
                self._tunnels.pop(op_id, None)

    def _connect(self, op_id, operation):
        """One operation, from PENDING to the end of its tunnel."""
        try:
            request = parse(operation)
        except InvalidOperation as exc:
            return self._fail(op_id, str(exc))
        with self._lock:
            full = len(self._tunnels) >= self.config.max_tunnels
            if not full:
                self._tunnels[op_id] = None  # the slot is taken while the legs open
        if full:
            reason = f"too many tunnels: all {self.config.max_tunnels} are in use ([agent] max_tunnels)"
            self._tell_user(request, reason)
            return self._fail(op_id, reason)
        self.c8y.set_status(op_id, "EXECUTING")
        endpoint, ws, reasons = self._open_legs(request)
        if reasons:
            return self._fail(op_id, "; ".join(reasons))
        tunnel = Tunnel(endpoint, ws, f"tunnel-{op_id}", self.config.ping_interval)
        with self._lock:
            self._tunnels[op_id] = tunnel
        if self._stop.is_set():
            tunnel.stop(1001, "the agent is stopping")
        try:
            self.c8y.set_status(op_id, "SUCCESSFUL")
        except (CloudError, CloudUnreachable) as exc:
            log.warning("operation %s: the tunnel is up, but its status could not be set SUCCESSFUL: %s", op_id, exc)
        started = time.monotonic()
        log.info("tunnel %s open: %s <-> cloud (key %s)", op_id, endpoint.name, masked(request.connection_key))
        reason = tunnel.run()
        log.info("tunnel %s closed: %s, %d bytes to the cloud, %d bytes from the cloud, %.1f s: %s",
                 op_id, endpoint.name, tunnel.sent, tunnel.received, time.monotonic() - started, reason)

    def _open_legs(self, request):
        """Both legs at once, each with its own timeout: (endpoint, websocket, reasons either failed)."""
        legs, reasons = {}, []
        serial_port = self._serial_ports.mapped(request.hostname, request.port)

        def open_endpoint():
            try:
                if serial_port:
                    legs["endpoint"] = self._serial_ports.open(serial_port)
                else:
                    legs["endpoint"] = open_tcp(request.hostname, request.port, self.config.connect_timeout, request.target)
            except EndpointError as exc:
                reasons.append(str(exc))

        opener = threading.Thread(target=open_endpoint, name=f"connect-{request.operation_id}", daemon=True)
        opener.start()
        try:
            legs["ws"] = open_device_websocket(self.access, request.connection_key, self.config.connect_timeout)
        except WebSocketLegError as exc:
            reasons.append(str(exc))
        opener.join()
        if len(legs) < 2 and not reasons:
            reasons.append(f"cannot connect to {request.target}: the connection attempt failed")
        if reasons and "endpoint" in legs:
            legs["endpoint"].close()
        if reasons and "ws" in legs:
            _close_with_reason(legs["ws"], "; ".join(reasons))
        return legs.get("endpoint"), legs.get("ws"), reasons

    def _tell_user(self, request, reason):
        """Close the cloud leg with the reason at once, rather than leave the user's tool waiting for its timeout."""
        try:
            _close_with_reason(open_device_websocket(self.access, request.connection_key, self.config.connect_timeout), reason)
        except WebSocketLegError as exc:
            log.debug("operation %s: could not tell the user why: %s", request.operation_id, exc)

    def _fail(self, op_id, reason):
        log.warning("operation %s FAILED: %s", op_id, reason)
        self.c8y.set_status(op_id, "FAILED", reason)


def _identity(config):
    """What the agent signs in and registers as: when any of it changes, it does both again."""
    return config.cloud, config.bootstrap, config.external_id, config.device_name, config.device_type


def _close_with_reason(ws, reason):
    """1011 and the reason, which the cloud passes on to the user's tool."""
    ws.close(status=1011, reason=reason.encode()[:123])
