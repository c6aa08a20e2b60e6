"""The agent: signs in, registers the device, then takes c8y_RemoteAccessConnect operations from
its feed (cra.feed: notifications or polling) and gives each its own thread, so that a slow
connect or a long session never holds up another. Here are the dispatch and its limits.

The loop outlives every failure of the network or the platform: it logs the failure (a rejected
password once, until it works again), waits with a backoff that doubles up to max_backoff, and
asks again; PENDING operations wait on the platform meanwhile, so none is lost.
"""
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict

from cra.bootstrap import WAITING, CredentialsFileError
from cra.c8y import C8y, CloudError, CloudUnreachable
from cra.endpoint import SerialPorts
from cra.feed import Feed
from cra.legs import LegsFailed, open_legs, tell_user
from cra.operation import InvalidOperation, masked, parse
from cra.registration import register
from cra.session_events import SessionEvents
from cra.signin import CredentialsRejected, configured, sign_in
from cra.tunnel import Tunnel
from cra.websocket_leg import tls_context

log = logging.getLogger("cra.agent")

RESTART_REASON = "agent restarted; the session was lost"
STOP_WAIT = 3.0
WAITING_EVERY = 60.0
REASON_MAX = 500  # characters of an unexpected failure's text in failureReason
SEEN_MAX = 1000  # operation ids remembered so that one both pushed and listed is handled once
RFB_UNSPOKEN = b"RFB 005."  # RealVNC's own protocol version; the platform's VNC client speaks RFB 3.x only


class Agent:
    def __init__(self, config):
        self.config = config
        self._use(configured(config))
        self._serial_ports = SerialPorts(config.serial_ports)
        self.device_id = None
        self._events = None  # SessionEvents, made where the device id becomes known
        self._feed = None
        self._signed_in = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # ends a wait of the agent's thread: a stop or a reload
        self._lock = threading.Lock()
        self._reloaded = None  # a configuration for the agent's thread to take
        self._seen = OrderedDict()
        self._tunnels = {}
        self._threads = []
        self._failures = 0
        self._credentials_reported = False
        self._waiting_told = None

    def run(self):
        """Until shutdown(): start (again after a reload), then dispatch what the feed brings."""
        while not self._stop.is_set():
            with self._lock:
                config, self._reloaded = self._reloaded, None
            if config:
                self._apply(config)
            if not self._attempt(self._dispatch_next if self._feed else self._start):
                self._wait(self._backoff())

    def reload(self, config):
        """Take a re-read configuration, in the agent's own thread at its next step, so that no step
        meets half of it; open tunnels go on as they are."""
        with self._lock:
            self._reloaded = config
        self._wake.set()
        self._end_feed()

    def _apply(self, config):
        """A change of tenant, device or credentials signs in and registers again; the feed starts
        anew in any case, with the settings it may have been given."""
        restart = _identity(config) != _identity(self.config)
        self._serial_ports.remap(config.serial_ports)
        tls_context.cache_clear()  # a renewed CA file counts from the next tunnel on
        self.config = config
        if restart:
            self._use(configured(config))
            self._signed_in = False
            self.device_id = None
        self._end_feed()
        log.info("configuration reloaded%s", "; signing in and registering again" if restart else "")

    def shutdown(self):
        """Stop taking operations, close every tunnel with 1001, and cut what has not closed within STOP_WAIT.

        Called from another thread than run(), which may be inside a request that takes its time.
        """
        self._stop.set()
        self._wake.set()
        self._end_feed()
        with self._lock:
            tunnels = [t for t in self._tunnels.values() if t is not None]
        for tunnel in tunnels:
            tunnel.stop(1001, "the agent is stopping")
        deadline = time.monotonic() + STOP_WAIT
        for thread in list(self._threads):
            thread.join(max(0, deadline - time.monotonic()))
        if self._events:  # the end events of the tunnels just closed, within the same bound
            self._events.drain(max(0, deadline - time.monotonic()))
        for tunnel in tunnels:
            tunnel.cut()

    def stop_when_idle(self):
        """Shut down and return True when no operation is being handled; else False, and all goes on.
        Checked and stopped under the lock that dispatch takes, so no operation starts in between:
        one that comes after stays PENDING for whatever runs next."""
        with self._lock:
            if any(thread.is_alive() for thread in self._threads):
                return False
            self._stop.set()
        self.shutdown()
        return True

    def _attempt(self, step):
        """Run one step against the cloud; False, with the reason logged, when the cloud failed it."""
        try:
            step()
        except (CloudError, CloudUnreachable, CredentialsFileError, CredentialsRejected) as exc:
            self._failures += 1
            if isinstance(exc, CloudError) and exc.status == 401:
                exc = self._credentials.rejected(self.config.cloud.url)
            if isinstance(exc, CredentialsRejected):
                if not self._credentials_reported:
                    log.error("%s; retrying every %g s at most", exc, self.config.max_backoff)
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
        """Everything before the first operation; all of it again when a step fails."""
        self._sign_in()
        if not self._signed_in:
            return
        if self.device_id is None:
            self.device_id = register(self.c8y, self.config)
            self._fail_lost_sessions()
        self._events = SessionEvents(self.c8y, self.device_id, self.config.session_events)  # after a reload too
        self._feed = Feed(self.c8y, self.access, self.device_id, self.config)

    def _sign_in(self):
        """The credentials to use; once found, they stay in use until a reload changes the configuration."""
        if self._signed_in:
            return
        signed_in = sign_in(self.config, self._not_accepted_yet)
        if signed_in is None:  # stopping, or reloaded
            return
        if signed_in.received:
            log.info("device credentials received: user %s of tenant %s", signed_in.access.user, signed_in.access.tenant)
            if signed_in.not_stored:
                log.error("%s: they are used until the agent stops, then lost; the device must then be registered again",
                          signed_in.not_stored)
            else:
                log.info("device credentials stored in %s", self.config.bootstrap.credentials_file)
        self._use(signed_in)
        self._signed_in = True

    def _use(self, signed_in):
        """REST calls and tunnels from now on: the configured credentials, or the device's own."""
        self._credentials, self.access = signed_in, signed_in.access
        self.c8y = C8y(signed_in.access)

    def _not_accepted_yet(self):
        """Said at once and then every WAITING_EVERY; True to ask again after poll_interval, False
        once stopping or reloaded."""
        if self._waiting_told is None or time.monotonic() - self._waiting_told >= WAITING_EVERY:
            log.info("%s: register external id %s there (Devices > Registration) and accept it", WAITING,
                     self.config.external_id)
            self._waiting_told = time.monotonic()
        self._wait(self.config.poll_interval)
        return not (self._stop.is_set() or self._reloaded)

    def _wait(self, seconds):
        self._wake.wait(seconds)
        self._wake.clear()

    def _end_feed(self):
        feed, self._feed = self._feed, None
        if feed:
            feed.close()

    def _fail_lost_sessions(self):
        for operation in self.c8y.connect_operations(self.device_id, "EXECUTING"):
            self.c8y.set_status(operation["id"], "FAILED", RESTART_REASON)
            log.info("operation %s set FAILED: %s", operation["id"], RESTART_REASON)

    def _dispatch_next(self):
        feed = self._feed
        for operation in feed.next() if feed else ():
            op_id = _usable_id(operation)
            key = op_id or _fingerprint(operation)
            with self._lock:
                # seen: being handled or handled, maybe listed before its status changed, or pushed and listed
                seen, self._seen[key] = key in self._seen, True
                if len(self._seen) > SEEN_MAX:
                    self._seen.popitem(last=False)
            if seen:
                continue
            if op_id is None:
                log.warning("an operation without an id was skipped: its status cannot be set (it has %s)",
                            ", ".join(sorted(map(str, operation))) or "nothing")
                continue
            thread = threading.Thread(target=self._handle, args=(op_id, operation), name=f"op-{op_id}", daemon=True)
            with self._lock:
                if self._stop.is_set():
                    return
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()

    def _handle(self, op_id, operation):
        try:
            self._connect(op_id, operation)
        except (CloudError, CloudUnreachable) as exc:
            log.warning("operation %s: %s", op_id, exc)
            with self._lock:
                self._seen.pop(op_id, None)  # still PENDING, maybe: the next listing takes it up again
        except Exception as exc:  # whatever an operation meets ends that operation, never the agent
            log.debug("operation %s: unexpected failure", op_id, exc_info=True)
            try:
                self._fail(op_id, f"the agent could not handle the operation: {type(exc).__name__}: {exc}"[:REASON_MAX])
            except (CloudError, CloudUnreachable) as cloud_failure:
                log.warning("operation %s: %s", op_id, cloud_failure)
        finally:
            with self._lock:
                self._tunnels.pop(op_id, None)

    def _connect(self, op_id, operation):
        """One operation, from PENDING to the end of its tunnel."""
        try:
            request = parse(operation)
        except InvalidOperation as exc:
            if exc.connection_key:
                tell_user(op_id, exc.connection_key, self.access, str(exc), self.config.connect_timeout)
            return self._fail(op_id, str(exc))
        with self._lock:
            full = len(self._tunnels) >= self.config.max_tunnels
            if not full:
                self._tunnels[op_id] = None  # the slot is taken while the legs open
        if full:
            reason = f"too many tunnels: all {self.config.max_tunnels} are in use ([agent] max_tunnels)"
            tell_user(op_id, request.connection_key, self.access, reason, self.config.connect_timeout)
            return self._fail(op_id, reason)
        self.c8y.set_status(op_id, "EXECUTING")
        try:
            endpoint, ws = open_legs(request, self.access, self._serial_ports, self.config.connect_timeout,
                                     self.config.allow)
        except LegsFailed as exc:
            return self._fail(op_id, str(exc))
        tunnel = Tunnel(endpoint, ws, f"tunnel-{op_id}", self.config.ping_interval, self.config.idle_timeout,
                        self.config.max_session_time)
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
        events = self._events  # the end goes where the start went, whatever a reload changes meanwhile
        events.opened(op_id, request.target)
        reason = tunnel.run()
        seconds = time.monotonic() - started
        log.info("tunnel %s closed: %s, %d bytes to the cloud, %d bytes from the cloud, %.1f s: %s",
                 op_id, endpoint.name, tunnel.sent, tunnel.received, seconds, reason)
        events.closed(op_id, request.target, tunnel.sent, tunnel.received, seconds, reason)
        if tunnel.opening.startswith(RFB_UNSPOKEN):
            log.warning("tunnel %s: %s is a VNC server that offers RFB %s (RealVNC's default), which the platform's "
                        "VNC client cannot speak: set the server's ProtocolVersion to 3.8 (RealVNC: Options > Expert)",
                        op_id, endpoint.name, tunnel.opening[4:11].decode("ascii", "replace"))

    def _fail(self, op_id, reason):
        log.warning("operation %s FAILED: %s", op_id, reason)
        self.c8y.set_status(op_id, "FAILED", reason)


def _usable_id(operation):
    """The operation's id as the REST paths take it, or None when it has none that could be one."""
    op_id = operation.get("id")
    if isinstance(op_id, int) and not isinstance(op_id, bool):
        return str(op_id)
    return op_id if isinstance(op_id, str) and op_id.isascii() and op_id.isalnum() else None


def _fingerprint(operation):
    """What tells an operation without an id from another: it is remembered, and so skipped once, by this."""
    return "without id: " + hashlib.sha256(json.dumps(operation, sort_keys=True, default=str).encode()).hexdigest()


def _identity(config):
    """What the agent signs in and registers as: when any of it changes, it does both again."""
    return config.cloud, config.bootstrap, config.external_id, config.device_name, config.device_type

