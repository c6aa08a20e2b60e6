"""The audit trail: a c8y_RemoteAccessSession event on the device when a tunnel opens, and one when
it ends, with the bytes each way, the duration and why it ended ([agent] session_events; README,
"Session events (audit trail)"). They show in Device Management > the device > Events.

An event is a record about a tunnel, never a condition for one: opened() and closed() only queue
it, and one worker thread posts what is queued (started by the first event, ended when none has come
for IDLE_EXIT, so an idle agent has no thread for it). So a cloud that is down, slow or refusing events
neither delays a tunnel's start nor holds its end, and a tunnel's pump and operation threads never
wait on a request. An event that cannot be posted is logged and dropped: the first of a run of
failures at warning, the rest at debug until one is posted again, so a tenant that refuses events
does not fill the log. The queue is bounded: past QUEUE_MAX waiting events, a new one is dropped
the same way. Nothing secret goes into an event: the target, the operation id, byte counts, the
duration and the reason the tunnel's log line gives, never a connection key.
"""
import logging
import threading
from collections import deque

from cra.c8y import CloudError, CloudUnreachable

log = logging.getLogger("cra.agent")

EVENT_TYPE = "c8y_RemoteAccessSession"
FRAGMENT = "c8y_RemoteAccessSession"
QUEUE_MAX = 100  # events waiting to be posted; a cloud that slow drops the newest
IDLE_EXIT = 1.0  # s without events after which the worker ends: no thread outlives the tunnels by more


class SessionEvents:
    def __init__(self, c8y, device_id, enabled=True):
        """Events for `device_id` posted with `c8y` (the agent's C8y, whose requests.Session the operation
        threads already share); with enabled False, opened() and closed() do nothing."""
        self._c8y = c8y
        self._device_id = device_id
        self.enabled = enabled
        self._queue = deque()
        self._changed = threading.Condition()  # guards the queue, the worker and the counts below
        self._worker = None
        self._unposted = 0  # queued or being posted
        self._failing = False  # a failure was logged at warning; the next ones go to debug until a post works
        self._overflowing = False

    def opened(self, op_id, target):
        """The tunnel of operation `op_id` to `target` ("host:port") is open. Returns at once."""
        self._add(op_id, "opened", f"Remote access session to {target} opened (operation {op_id})",
                  {"operationId": str(op_id), "target": target, "status": "OPEN"})

    def closed(self, op_id, target, sent, received, seconds, reason):
        """The tunnel has ended: `sent` bytes went to the cloud and `received` came from it in `seconds`,
        and `reason` says why it ended (the words of its log line). Returns at once."""
        duration = round(seconds, 1)
        self._add(op_id, "closed", f"Remote access session to {target} closed after {duration:.1f} s: {reason}",
                  {"operationId": str(op_id), "target": target, "status": "CLOSED", "bytesToCloud": int(sent),
                   "bytesFromCloud": int(received), "durationSeconds": duration, "reason": reason})

    def drain(self, timeout):
        """Wait up to `timeout` seconds for the queued events to be posted (the agent stopping lets the
        end events of the tunnels it closed go out); True when none is left."""
        with self._changed:
            self._changed.wait_for(lambda: not self._unposted, timeout)
            left = self._unposted
        if left:
            log.warning("%d session event%s not posted before the stop: dropped", left, "" if left == 1 else "s")
        return not left

    def _add(self, op_id, what, text, fragment):
        if not self.enabled:
            return
        with self._changed:
            if len(self._queue) >= QUEUE_MAX:
                level = logging.DEBUG if self._overflowing else logging.WARNING
                self._overflowing = True
                log.log(level, "session event for operation %s (%s) dropped: %d events are waiting for the cloud",
                        op_id, what, len(self._queue))
                return
            self._overflowing = False
            self._queue.append((op_id, what, text, fragment))
            self._unposted += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="session-events", daemon=True)
                self._worker.start()
            self._changed.notify_all()

    def _work(self):
        """Post what is queued, in order; end after IDLE_EXIT without any (deciding so under the lock,
        so that an event queued meanwhile starts a new worker or is taken by this one)."""
        while True:
            with self._changed:
                if not self._changed.wait_for(lambda: self._queue, IDLE_EXIT):
                    self._worker = None
                    return
                item = self._queue.popleft()
            try:
                self._post(*item)
            finally:
                with self._changed:
                    self._unposted -= 1
                    self._changed.notify_all()

    def _post(self, op_id, what, text, fragment):
        try:
            self._c8y.post_event(self._device_id, EVENT_TYPE, text, {FRAGMENT: fragment})
        except Exception as exc:  # CloudError, CloudUnreachable, or anything else: an event never ends the agent
            why = str(exc) if isinstance(exc, (CloudError, CloudUnreachable)) else f"{type(exc).__name__}: {exc}"
            if self._failing:
                log.debug("session event for operation %s (%s) not posted, dropped: %s", op_id, what, why)
            else:
                log.warning("session event for operation %s (%s) not posted, dropped: %s; further failures are "
                            "logged at debug level until one is posted", op_id, what, why)
                self._failing = True
            return
        if self._failing:
            log.info("session events are posted again")
            self._failing = False
