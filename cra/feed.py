"""Where the agent's operations come from, behind one call, next(): real-time notifications
(operations pushed the moment they are created, over a Bayeux long poll held on a thread of its
own), or polling every poll_interval, which is also the way back whenever notifications fail.

Nothing created while the agent was not listening is lost: the feed's start, every
(re)subscription, every resumed session and every switch to polling is followed by one listing
of the PENDING operations over REST. An operation may so be seen twice, pushed and listed; the
agent handles each id once.
"""
import logging
import queue
import threading

from cra.bayeux import Lost, Refused, Session
from cra.c8y import CONNECT_FRAGMENT, NOTIFICATIONS, C8y, CloudError, CloudUnreachable, proxy_url

log = logging.getLogger("cra.agent")

# Failures in a row, with no held connect answered in between, before polling takes over: with the
# waits between them (0, 1, 2, 4 s) a platform that restarts within about 7 s is not polled.
FAILURES_BEFORE_POLLING = 5
RETRY_MAX = 3600.0  # s: the longest wait between two tries to get notifications back
# s: the hold asked for behind an HTTP proxy, whose keepalive reaches only the proxy: a connect the
# proxy lost on its way to the platform is then given up within a minute (ANSWER_MARGIN more).
PROXY_HOLD = 50.0

_LIST = object()  # list PENDING operations over REST now
_CLOSED = object()


class Feed:
    """What the agent loop consumes: next() blocks until there may be operations, then gives them.
    Pushed ones come through a queue from the listener's thread, which also asks for listings."""

    def __init__(self, c8y, access, device_id, config):
        self._c8y, self.device_id = c8y, device_id
        self._poll_interval = config.poll_interval
        self._queue = queue.Queue()
        self.closed = threading.Event()
        self._list_due = True
        self._polling = config.operations == "polling"
        self._listener = None
        if self._polling:
            log.info("operations: polling every %g s ([agent] operations = polling)", self._poll_interval)
        else:
            self._listener = _Listener(self, access, config)
            threading.Thread(target=self._listener.run, name="notifications", daemon=True).start()

    def next(self):
        """The operations to look at now: waits until there may be some, or close(). A failed
        listing (CloudError, CloudUnreachable) is tried again at the next call."""
        if not self._list_due:
            try:
                item = self._queue.get(timeout=self._poll_interval if self._polling else None)
            except queue.Empty:
                item = _LIST
            if item is _CLOSED:
                return []
            if item is not _LIST:
                return [item]
            self._list_due = True
        operations = self._c8y.connect_operations(self.device_id, "PENDING")
        self._list_due = False
        return operations

    def close(self):
        """Ends next() and the listener, whose session is ended on the platform too, so that its held
        connect is answered and its thread ends; this returns at once."""
        self.closed.set()
        self._queue.put(_CLOSED)
        if self._listener:
            threading.Thread(target=self._listener.disconnect, name="notifications-end", daemon=True).start()

    def deliver(self, operation):
        """A pushed operation, if it is one the listing would give: the channel carries all of the device's."""
        if operation.get("status") == "PENDING" and CONNECT_FRAGMENT in operation and not self.closed.is_set():
            self._queue.put(operation)

    def relist(self):
        """One listing of the PENDING operations, as soon as next() is called."""
        self._queue.put(_LIST)

    def poll(self, polling):
        """Poll every poll_interval from now on, or stop polling; a listing either way."""
        self._polling = polling
        self.relist()

    @property
    def polling(self):
        return self._polling


class _Listener:
    """The Bayeux session's loop, and the decision to poll instead when it fails."""

    def __init__(self, feed, access, config):
        self._feed, self._url = feed, access.url
        self._c8y = C8y(access)
        self._session = Session(self._c8y)
        self._hold = PROXY_HOLD if proxy_url(access) else None
        self._poll_interval, self._first_retry = config.poll_interval, config.max_backoff
        self._retry_wait = self._first_retry
        self._subscribed_before = False

    def run(self):
        try:
            self._listen()
        except Exception:  # a bug here must not leave the agent deaf: it polls instead
            log.exception("operations: the notification listener failed; polling every %g s from now on",
                          self._poll_interval)
            self._feed.poll(True)
        finally:
            self._c8y.close()

    def disconnect(self):
        if self._session.client_id is not None:
            self._session.disconnect()

    def _listen(self):
        feed, session, failures = self._feed, self._session, 0
        resuming = False  # a connect failed on the way: what it carried may be lost
        while not feed.closed.is_set():
            try:
                opened = session.client_id is None
                if opened:
                    session.open(feed.device_id)
                    resuming = False
                operations, held = session.connect(feed.device_id, hold=0 if resuming else self._hold)
                if feed.closed.is_set():
                    break
                for operation in operations:
                    feed.deliver(operation)
                if opened:  # the first connect, answered at once: the new session works
                    self._listening()
                elif resuming:  # answered at once: the platform holds the session again, so a listing now misses nothing
                    feed.relist()
                if held:
                    failures = 0
                resuming = False
                self._wait(session.interval)
                continue
            except Refused as exc:
                failures, error = FAILURES_BEFORE_POLLING, exc
            except Lost as exc:
                log.info("operations: the platform no longer knows the notification session (%s); subscribing again", exc)
                failures, error = failures + 1, exc
            except (CloudError, CloudUnreachable) as exc:
                failures, error = failures + 1, exc
                resuming = session.client_id is not None
            if feed.closed.is_set():
                break
            if failures < FAILURES_BEFORE_POLLING:
                if not isinstance(error, Lost):
                    (log.info if failures == 1 else log.debug)("operations: %s; connecting again", error)
                backoff = 0 if failures == 1 else min(2 ** (failures - 2), self._first_retry)
                self._wait(max(session.interval, backoff))
            else:
                session.forget()
                failures, resuming = FAILURES_BEFORE_POLLING - 1, False  # a try from now on is one session
                self._poll_until_retry(error)

    def _listening(self):
        if self._feed.polling:
            log.info("operations: real-time notifications work again; polling stopped")
            self._retry_wait = self._first_retry
        elif not self._subscribed_before:
            log.info("operations: real-time notifications from %s%s%s", self._url, NOTIFICATIONS,
                     f", each connect held {PROXY_HOLD:g} s at most through the proxy" if self._hold else "")
        self._subscribed_before = True
        self._feed.poll(False)

    def _poll_until_retry(self, error):
        """Polling, told once; then notifications tried again after a wait that doubles while the
        platform keeps refusing them (not while it cannot be reached: polling needs it as much)."""
        if not self._feed.polling:
            log.warning("operations: real-time notifications unavailable (%s); polling every %g s and "
                        "trying notifications again in %g s", error, self._poll_interval, self._retry_wait)
            self._feed.poll(True)
        else:
            log.debug("operations: real-time notifications still unavailable (%s)", error)
        self._wait(self._retry_wait)
        if not isinstance(error, CloudUnreachable):
            self._retry_wait = min(self._retry_wait * 2, RETRY_MAX)

    def _wait(self, seconds):
        if seconds:
            self._feed.closed.wait(seconds)
