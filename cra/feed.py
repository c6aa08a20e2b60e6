"""Where the agent's operations come from, behind one call, next(): real-time notifications
(operations pushed the moment they are created, over a Bayeux long poll held on a thread of its
own), or polling every poll_interval, which is also the way back whenever notifications fail.

Nothing created while the agent was not listening is lost: every (re)subscription, and every
switch to polling, is followed by one listing of the PENDING operations over REST. An operation
may so be seen twice, pushed and listed; the agent handles each id once.
"""
import logging
import queue
import threading

from cra.bayeux import Lost, Refused, Session
from cra.c8y import CONNECT_FRAGMENT, C8y, CloudError, CloudUnreachable

log = logging.getLogger("cra.agent")

FAILURES_BEFORE_POLLING = 3  # failed attempts in a row, without a connect answered, before polling takes over
RETRY_MAX = 3600.0  # s: the longest wait between two tries to get notifications back

_LIST = object()  # list PENDING operations over REST now
_CLOSED = object()


class Feed:
    """What the agent loop consumes: next() blocks until there may be operations, then gives them.
    Pushed ones come through a queue from the listener's thread, which also asks for listings."""

    def __init__(self, c8y, access, device_id, config):
        self._c8y, self._device_id = c8y, device_id
        self._poll_interval = config.poll_interval
        self._queue = queue.Queue()
        self._closed = threading.Event()
        self._list_due = True
        self._polling = config.operations == "polling"
        if self._polling:
            log.info("operations: polling every %g s ([agent] operations = polling)", self._poll_interval)
        else:
            self._list_due = False
            listener = _Listener(self, C8y(access), access.url, config)
            threading.Thread(target=listener.run, name="notifications", daemon=True).start()

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
        operations = self._c8y.connect_operations(self._device_id, "PENDING")
        self._list_due = False
        return operations

    def close(self):
        """Ends next() and the listener; a connect the listener holds is left to end by itself."""
        self._closed.set()
        self._queue.put(_CLOSED)

    def _deliver(self, operation):
        """A pushed operation, if it is one the listing would give: the channel carries all of the device's."""
        if operation.get("status") == "PENDING" and CONNECT_FRAGMENT in operation and not self._closed.is_set():
            self._queue.put(operation)

    def _switch(self, polling):
        self._polling = polling
        self.relist()

    def relist(self):
        """One listing of the PENDING operations, as soon as next() is called."""
        self._queue.put(_LIST)


class _Listener:
    """The Bayeux session's loop, and the decision to poll instead when it fails."""

    def __init__(self, feed, c8y, url, config):
        self._feed, self._c8y, self._url = feed, c8y, url
        self._device_id = feed._device_id
        self._poll_interval, self._first_retry = config.poll_interval, config.max_backoff
        self._retry_wait = self._first_retry
        self._subscribed_before = False

    def run(self):
        session, failures, reason = Session(self._c8y), 0, None
        resuming = False  # a connect failed on the way: what it carried may be lost
        while not self._feed._closed.is_set():
            try:
                if session.client_id is None:
                    session.open(self._device_id)
                    self._listening()
                    resuming = False
                for operation in session.connect(self._device_id, hold=0 if resuming else None):
                    self._feed._deliver(operation)
                if resuming:  # answered at once: the platform holds the session again, so a listing now misses nothing
                    self._feed.relist()
                failures, resuming = 0, False
                self._wait(session.interval)
                continue
            except Lost as exc:
                if session.connected:
                    log.info("operations: the platform no longer knows the notification session (%s); "
                             "subscribing again", exc)
                    failures = 0
                    continue
                failures, reason = failures + 1, str(exc)
            except Refused as exc:
                failures, reason = FAILURES_BEFORE_POLLING, str(exc)
            except (CloudError, CloudUnreachable) as exc:
                failures, reason = failures + 1, str(exc)
                resuming = session.client_id is not None
            if failures < FAILURES_BEFORE_POLLING:
                self._wait(min(2 ** (failures - 1), self._first_retry))
            else:
                session, failures = Session(self._c8y), 0
                self._poll_until_retry(reason)
        self._c8y.close()

    def _listening(self):
        if self._feed._polling:
            log.info("operations: real-time notifications work again; polling stopped")
            self._retry_wait = self._first_retry
        elif not self._subscribed_before:
            log.info("operations: real-time notifications from %s/notification/operations", self._url)
        self._subscribed_before = True
        self._feed._switch(polling=False)

    def _poll_until_retry(self, reason):
        """Polling, told once; then, waiting longer each time, notifications tried again until one
        session is up or the feed is closed."""
        if not self._feed._polling:
            log.warning("operations: real-time notifications unavailable (%s); polling every %g s and "
                        "trying notifications again in %g s", reason, self._poll_interval, self._retry_wait)
            self._feed._switch(polling=True)
        else:
            log.debug("operations: real-time notifications still unavailable (%s)", reason)
        self._wait(self._retry_wait)
        self._retry_wait = min(self._retry_wait * 2, RETRY_MAX)

    def _wait(self, seconds):
        if seconds:
            self._feed._closed.wait(seconds)
