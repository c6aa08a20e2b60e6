"""One Bayeux (CometD) long-polling session at the platform's operation notifications (docs/wire.md
section 3): handshake, subscribe to the device's channel, then connect after connect, each held by
the platform until an operation for the device is created or its hold ends.

What the platform says is sorted into three outcomes for whoever drives the session: operations,
Lost (the session is gone: handshake again) and Refused (notifications are not to be had here:
poll instead). Anything else is the REST layer's CloudError or CloudUnreachable.
"""
import itertools

from cra.c8y import CloudError, CloudUnreachable
from cra.errors import AgentError

HANDSHAKE = "/meta/handshake"
SUBSCRIBE = "/meta/subscribe"
CONNECT = "/meta/connect"
DISCONNECT = "/meta/disconnect"
LONG_POLLING = "long-polling"
DEFAULT_HOLD = 5400.0  # s: the platform's advised connect timeout, 5,400,000 ms
MAX_HOLD = 7200.0  # s: the most the platform holds a connect
# A held connect's read timeout is its hold and this much more: enough for the answer to travel,
# little enough that an answer lost on the way costs no longer than a dead link found by keepalive.
ANSWER_MARGIN = 10.0
REFUSING_STATUSES = (403, 404)


class Lost(AgentError):
    """The platform no longer knows the session (402::Unknown client, advice handshake)."""


class Refused(AgentError):
    """The platform will not give this device notifications: the endpoint is missing or forbidden,
    or it denied the handshake or the subscription, or advised not to reconnect."""


class Session:
    def __init__(self, c8y):
        self._c8y = c8y
        self._ids = itertools.count(1)
        self.client_id = None
        self.hold = DEFAULT_HOLD
        self.interval = 0.0  # s to wait before the next connect, as advised
        self._answered = False  # a connect since the handshake: the platform answers the first at once

    def open(self, device_id):
        """Handshake and subscribe to the device's channel: both, or no session at all."""
        reply = self._exchange({"channel": HANDSHAKE, "version": "1.0", "supportedConnectionTypes": [LONG_POLLING]})
        if not isinstance(reply.get("clientId"), str) or not reply["clientId"]:
            raise Refused("the handshake was answered without a clientId")
        self.client_id, self._answered = reply["clientId"], False
        try:
            self._exchange({"channel": SUBSCRIBE, "clientId": self.client_id, "subscription": f"/{device_id}"})
        except BaseException:
            self.forget()
            raise

    def connect(self, device_id, hold=None):
        """(the data of the messages for the device that this connect brought: its new operations,
        whether the platform held it: a session that works). `hold` asks it to answer sooner than
        it would (0: at once)."""
        message = {"channel": CONNECT, "clientId": self.client_id, "connectionType": LONG_POLLING}
        if hold is not None:
            message["advice"] = {"timeout": round(hold * 1000)}
        waited = self.hold if hold is None else min(hold, self.hold)
        answer = self._post(message, read_timeout=waited + ANSWER_MARGIN)
        self._check(answer, CONNECT)
        held, self._answered = self._answered and waited > 0, True
        channel = f"/{device_id}"
        return [m["data"] for m in answer if m.get("channel") == channel and isinstance(m.get("data"), dict)], held

    def disconnect(self):
        """Tell the platform the session is over, so that it answers a connect held for it; no
        answer is as good as any here."""
        try:
            self._post({"channel": DISCONNECT, "clientId": self.client_id})
        except (CloudError, CloudUnreachable, Refused):
            pass

    def forget(self):
        self.client_id, self._answered = None, False

    def _exchange(self, message):
        return self._check(self._post(message), message["channel"])

    def _post(self, message, read_timeout=None):
        message = {**message, "id": str(next(self._ids))}
        try:
            answer = self._c8y.notification([message], read_timeout)
        except CloudError as exc:
            if exc.status in REFUSING_STATUSES:
                raise Refused(str(exc)) from None
            raise
        if not all(isinstance(m, dict) for m in answer):
            raise CloudUnreachable(f"{message['channel']}: the answer is not a list of Bayeux messages")
        return answer

    def _check(self, answer, channel):
        """The reply to `channel` in the answer, once its advice is taken; Lost or Refused when the
        session cannot go on as it is (a 402 whatever the reconnect advice, as CometD clients do)."""
        reply = next((m for m in answer if m.get("channel") == channel), None)
        if reply is None:
            raise CloudUnreachable(f"{channel}: the answer has no reply to it")
        advice = reply.get("advice") if isinstance(reply.get("advice"), dict) else {}
        self._take(advice)
        successful = reply.get("successful") is True
        error = "" if successful else str(reply.get("error") or "no reason given")[:300]
        if error.startswith("402::") or (not successful and advice.get("reconnect") == "handshake"):
            self.forget()
            raise Lost(f"{channel}: {error}")
        if advice.get("reconnect") == "none":
            self.forget()
            raise Refused(f"{channel}: the platform ended the session and advises not to reconnect"
                          + (f" ({error})" if error else " (it ends a user's oldest one past 10 on a channel: "
                                                          "do other agents use these credentials?)"))
        if successful:
            return reply
        if channel == CONNECT:
            raise CloudUnreachable(f"{channel} failed: {error}")
        raise Refused(f"{channel} refused: {error}")

    def _take(self, advice):
        timeout, interval = _seconds(advice.get("timeout")), _seconds(advice.get("interval"))
        if timeout:
            self.hold = timeout
        if interval is not None:
            self.interval = interval


def _seconds(milliseconds):
    """Seconds, at most MAX_HOLD, for an advice's milliseconds; None when they are not a number."""
    if not isinstance(milliseconds, (int, float)) or isinstance(milliseconds, bool) or not milliseconds >= 0:
        return None
    return min(milliseconds, MAX_HOLD * 1000) / 1000
