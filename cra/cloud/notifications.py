"""Real-time notifications of new operations: Bayeux long polling at POST /notification/operations.

An agent that keeps one /meta/connect outstanding learns of a new operation at once instead of at
its next poll. The cloud holds that connect until an operation for a subscribed device is created
or the hold runs out; operations created while no connect is held wait in the client's queue for
the next one, so none is lost between two connects. Where the platform's documentation is silent,
the answers are CometD's, of the versions (2.x to 3.1) whose error strings ("402::Unknown client",
"403::Handshake denied") the platform's are. Clients live in memory only: after a restart every
clientId is unknown.
"""
import asyncio
import itertools
import logging
import secrets

from aiohttp import web

from cra.cloud.devicecontrol import render_operation
from cra.cloud.errors import ApiError, masked
from cra.cloud.rest import read_json, respond, whole_number

log = logging.getLogger("cra.cloud")

PATH = "/notification/operations"
HANDSHAKE, CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT = (
    "/meta/handshake", "/meta/connect", "/meta/subscribe", "/meta/unsubscribe", "/meta/disconnect")
META_PREFIX = "/meta/"
BAYEUX_VERSION = "1.0"
LONG_POLLING = "long-polling"
DEFAULT_HOLD = 5400.0  # seconds: the platform's advice timeout of 5 400 000 ms
MAX_HOLD = 7200.0  # the largest timeout the platform's documentation allows
MAX_INTERVAL = 10.0  # CometD's maxInterval: a client whose next connect does not come within it is gone
CLIENTS_PER_USER_AND_CHANNEL = 10  # the platform's default, "per user, subscription channel and server node"
SUPERSEDED_STATUS = 408  # CometD 2's answer to a held connect that a newer connect of its client replaced

UNKNOWN_CLIENT = "402::Unknown client"
HANDSHAKE_DENIED = "403:{}:Handshake denied"
SUBSCRIPTION_MISSING = "403::subscription_missing"
SUBSCRIPTION_INVALID = "403::subscription_invalid"
SUBSCRIBE_DENIED = "403:denied_by_security_policy:subscribe_denied"
PUBLISH_DENIED = "403:denied_by_security_policy:publish denied"
UNKNOWN_DEVICE = "404::no device has this id"
CHANNEL_MISSING = "400::channel missing"
UNKNOWN_META_CHANNEL = "400::unknown meta channel"

# Why a held connect ends.
DELIVERY, TIMEOUT, SUPERSEDED, CLOSED, STOPPING = "delivery", "timeout", "superseded", "closed", "stopping"


class Client:
    """One handshake's conversation: its channels, the operations waiting for its next connect, the
    connect it holds (at most one) and the timer that forgets it when no connect follows in time."""

    def __init__(self, principal):
        self.id = secrets.token_hex(16)
        self.tenant, self.user = principal.tenant, principal.user
        self.channels = set()
        self.queue = []
        self.connected = False  # a connect has been answered: from now on connects are held
        self.held = None  # the future a held connect waits on; its result says why it ends
        self.expiry = None

    def describe(self):
        return f"notification client {masked(self.id)} of {self.tenant}/{self.user}"

    async def hold(self, seconds):
        held = self.held = asyncio.get_running_loop().create_future()
        try:
            done, _ = await asyncio.wait({held}, timeout=seconds)
            return held.result() if done else TIMEOUT
        finally:
            if self.held is held:
                self.held = None

    def wake(self, reason):
        if self.held is not None and not self.held.done():
            self.held.set_result(reason)

    def stop_expiry(self):
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None


class Notifications:
    def __init__(self, store, hold):
        self._store = store
        self._hold = hold
        self._clients = {}
        self._subscribers = {}  # (tenant, "/<deviceId>") -> clients, in the order they subscribed
        self._delivery_ids = itertools.count(1)
        self._stopping = False

    def routes(self):
        return [web.post(PATH, self.endpoint)]

    def publish(self, tenant, operation):
        """Queue a new operation for every client subscribed to its device, and answer their held connects."""
        for client in self._subscribers.get((tenant, f"/{operation['deviceId']}"), ()):
            client.queue.append(operation)
            client.wake(DELIVERY)

    def shutdown(self):
        """Answer every held connect now, so that none keeps the cloud from stopping."""
        self._stopping = True
        for client in self._clients.values():
            client.wake(STOPPING)

    async def endpoint(self, request):
        messages = await read_messages(request)
        answer = []
        for message in messages:
            channel = message.get("channel")
            if not isinstance(channel, str):
                answer.append(failed(reply_to(message), CHANNEL_MISSING))
                continue
            if channel == HANDSHAKE:
                answer.append(self._handshake(request, message))
                continue
            client = self._client(request, message)
            if client is None:
                answer.append(unknown_client(message))
            elif channel == CONNECT:
                connect_answer = await self._connect(request, client, message, alone=len(messages) == 1)
                if connect_answer == SUPERSEDED:
                    return web.Response(status=SUPERSEDED_STATUS)
                answer.extend(connect_answer)
            elif channel == SUBSCRIBE:
                answer.append(self._subscribe(request, client, message))
            elif channel == UNSUBSCRIBE:
                answer.append(self._unsubscribe(client, message))
            elif channel == DISCONNECT:
                answer.append(self._disconnect(client, message))
            else:
                answer.append(failed(reply_to(message), UNKNOWN_META_CHANNEL if channel.startswith(META_PREFIX)
                                     else PUBLISH_DENIED))
        if "Accept" not in request.headers:
            # The platform's documented rule for long polling: without an Accept header, no body.
            return web.Response(status=200)
        return respond(answer)

    def _client(self, request, message):
        """The client a message names, if it is alive and belongs to the user asking."""
        client_id, principal = message.get("clientId"), request["principal"]
        client = self._clients.get(client_id) if isinstance(client_id, str) else None
        if client is None or (client.tenant, client.user) != (principal.tenant, principal.user):
            return None
        return client

    def _advice(self, reconnect="retry"):
        return {"reconnect": reconnect, "interval": 0, "timeout": int(self._hold * 1000)}

    def _handshake(self, request, message):
        reply = reply_to(message, version=BAYEUX_VERSION, minimumVersion=BAYEUX_VERSION,
                         supportedConnectionTypes=[LONG_POLLING])
        refused_field = handshake_refusal(message)
        if refused_field:
            return failed(reply, HANDSHAKE_DENIED.format(refused_field), advice={"reconnect": "none"})
        client = Client(request["principal"])
        self._clients[client.id] = client
        self._expire_later(client)
        log.info("%s: handshake", client.describe())
        reply.update(clientId=client.id, successful=True, advice=self._advice())
        return reply

    async def _connect(self, request, client, message, alone):
        """Deliveries, then the connect's reply; SUPERSEDED when a newer connect of the client replaced this one.

        The first connect after the handshake is answered at once, as CometD does, and so is one that
        shares its request with other messages or finds operations already queued.
        """
        client.stop_expiry()
        client.wake(SUPERSEDED)
        ending = DELIVERY
        hold = self._hold_of(message)
        if alone and client.connected and not client.queue and hold > 0 and not self._stopping:
            ending = await client.hold(hold)
        if ending == SUPERSEDED:
            return SUPERSEDED
        if ending == STOPPING or self._stopping:
            return [unknown_client(message)]
        client.connected = True
        deliveries = self._take_queue(request, client)
        if ending == CLOSED:
            return deliveries + [reply_to(message, clientId=client.id, successful=True, advice={"reconnect": "none"})]
        self._expire_later(client)
        return deliveries + [reply_to(message, clientId=client.id, successful=True, advice=self._advice())]

    def _hold_of(self, message):
        """Seconds to hold this connect: the cloud's hold, or less when the connect's advice.timeout asks for less."""
        advice = message.get("advice")
        asked = advice.get("timeout") if isinstance(advice, dict) else None
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked >= 0:
            return min(self._hold * 1000, asked) / 1000
        return self._hold

    def _take_queue(self, request, client):
        """The client's queued operations as Bayeux deliveries; kept for the next connect when this one's connection is gone."""
        if request.transport is None or request.transport.is_closing():
            return []
        operations, client.queue = client.queue, []
        return [{"channel": f"/{op['deviceId']}", "data": render_operation(request, op), "id": str(next(self._delivery_ids))}
                for op in operations]

    def _subscribe(self, request, client, message):
        reply, channels = subscription_of(message, client)
        if channels is None:
            return reply
        device_channels = [self._device_channel(request["principal"], channel) for channel in channels]
        error = next((error for _, error in device_channels if error), None)
        if error:
            return failed(reply, error)
        for device_channel, _ in device_channels:
            self._add_subscriber(client, device_channel)
        reply["successful"] = True
        return reply

    def _device_channel(self, principal, channel):
        """("/<deviceId>", None) for a device this principal may hear about, or (None, the Bayeux error)."""
        device_id = whole_number(channel[1:]) if channel.startswith("/") else None
        device = self._store.managed_object(principal.tenant, device_id) if device_id is not None else None
        if device is None:
            return None, UNKNOWN_DEVICE
        if principal.is_device and device["owner"] != principal.user:
            return None, SUBSCRIBE_DENIED
        return f"/{device_id}", None

    def _add_subscriber(self, client, channel):
        """Subscribe; when the user already has the limit of clients on the channel, the oldest is closed, as on the platform."""
        if channel in client.channels:
            return
        same_user = [c for c in self._subscribers.get((client.tenant, channel), ()) if c.user == client.user]
        if len(same_user) >= CLIENTS_PER_USER_AND_CHANNEL:
            log.info("%s closed: a newer client of the same user subscribed to %s, and a user may have %d per channel",
                     same_user[0].describe(), channel, CLIENTS_PER_USER_AND_CHANNEL)
            self._forget(same_user[0])
        client.channels.add(channel)
        self._subscribers.setdefault((client.tenant, channel), []).append(client)

    def _unsubscribe(self, client, message):
        reply, channels = subscription_of(message, client)
        if channels is None:
            return reply
        for channel in channels:
            self._remove_subscriber(client, channel)
        reply["successful"] = True
        return reply

    def _remove_subscriber(self, client, channel):
        if channel in client.channels:
            client.channels.discard(channel)
            subscribers = self._subscribers[(client.tenant, channel)]
            subscribers.remove(client)
            if not subscribers:
                del self._subscribers[(client.tenant, channel)]

    def _disconnect(self, client, message):
        log.info("%s: disconnect", client.describe())
        self._forget(client)
        return reply_to(message, clientId=client.id, successful=True)

    def _expire_later(self, client):
        client.expiry = asyncio.get_running_loop().call_later(MAX_INTERVAL, self._expire, client)

    def _expire(self, client):
        log.info("%s expired: no /meta/connect within %g s", client.describe(), MAX_INTERVAL)
        self._forget(client)

    def _forget(self, client):
        """The client is gone: any later message naming it gets 402, a connect it holds is answered now."""
        self._clients.pop(client.id, None)
        for channel in list(client.channels):
            self._remove_subscriber(client, channel)
        client.stop_expiry()
        client.wake(CLOSED)


async def read_messages(request):
    """The Bayeux messages in the body: a JSON array of objects (or one bare object, as CometD takes it); 400 otherwise."""
    body = await read_json(request)
    messages = [body] if isinstance(body, dict) else body
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "general/Bad Request",
                       'The request body must be a JSON array of Bayeux messages, e.g. [{"channel": "/meta/handshake", ...}].')
    return messages


def handshake_refusal(message):
    """The handshake field this cloud cannot agree to, or None: it speaks Bayeux 1.x over long polling only."""
    version = message.get("version", BAYEUX_VERSION)
    if not isinstance(version, str) or version.split(".")[0] != BAYEUX_VERSION.split(".")[0]:
        return "version"
    offered = message.get("supportedConnectionTypes", [LONG_POLLING])
    if not isinstance(offered, list) or LONG_POLLING not in offered:
        return "supportedConnectionTypes"
    return None


def subscription_of(message, client):
    """(the reply to a /meta/subscribe or /meta/unsubscribe, the channels it names), or (that reply
    failed, None) when its subscription field is missing or names no channels."""
    reply = reply_to(message, clientId=client.id)
    if "subscription" not in message:
        return failed(reply, SUBSCRIPTION_MISSING), None
    channels = channel_list(message["subscription"])
    if channels is None:
        return failed(reply, SUBSCRIPTION_INVALID), None
    reply["subscription"] = message["subscription"]
    return reply, channels


def channel_list(subscription):
    """A subscription field as a list of channel names (Bayeux allows one or several), or None when it is neither."""
    if isinstance(subscription, str):
        return [subscription]
    if isinstance(subscription, list) and subscription and all(isinstance(c, str) for c in subscription):
        return subscription
    return None


def reply_to(message, **fields):
    """A reply on the message's channel, with its id when it had one (Bayeux: replies to /meta/** carry the request's id)."""
    reply = {"channel": message["channel"]} if isinstance(message.get("channel"), str) else {}
    if "id" in message:
        reply["id"] = message["id"]
    reply.update(fields)
    return reply


def failed(reply, error, **fields):
    reply.update(successful=False, error=error, **fields)
    return reply


def unknown_client(message):
    """The answer for a clientId that was never handed out, has expired, disconnected, or died with a restart."""
    return failed(reply_to(message), UNKNOWN_CLIENT, advice={"reconnect": "handshake", "interval": 0})
