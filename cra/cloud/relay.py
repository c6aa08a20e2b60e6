"""The remote access relay (docs/wire.md section 4).

A client WebSocket creates the PENDING operation and its one-use connection key, then waits for
the device to connect with that key; from then on binary frames flow both ways. Each direction
holds at most one frame: it is not read from its source until it has been written to the other
side, so a slow reader slows the writer and nothing queues without bound. Whichever way a session
ends (either side closes, drops, breaks a rule, goes idle, the device never comes, the cloud stops),
it ends once, in `_end`, which closes both sides and writes the session's log line.

A configuration whose protocol is SSH is not relayed: cra-cloud is its SSH client, as the
platform's microservice is, and the client gets a terminal (cra/cloud/ssh_terminal.py) instead of
the target's bytes. Such a session ends in `_end` too; a client that is told why it ended with an
error gets the sentence first in a text frame, for the page to show.
"""
import asyncio
import itertools
import json
import logging
import time
import uuid

from aiohttp import WSMsgType, web

from cra.cloud.auth import require_remote_access_admin
from cra.cloud.configurations import known_configuration
from cra.cloud import ssh_terminal
from cra.cloud.devicecontrol import fail_operation, new_operation
from cra.cloud.endings import Ending, ending_of, text_frame_ending
from cra.cloud.errors import masked, not_found
from cra.cloud.inventory import visible_managed_object
from cra.cloud.rest import path_id
from cra.cloud.tenant import operation_timeout

log = logging.getLogger("cra.cloud")
routes = web.RouteTableDef()

MAX_FRAME = 1024 * 1024
CLOSE_TIMEOUT = 5
_session_numbers = itertools.count(1)


class Session:
    def __init__(self, tenant, device_id, config, operation_id, key, client, client_request):
        loop = asyncio.get_running_loop()
        self.number = next(_session_numbers)
        self.tenant, self.device_id, self.config = tenant, device_id, config
        self.operation_id, self.key = operation_id, key
        self.sides = {"client": (client, client_request)}
        self.device_joined = loop.create_future()
        self.stop = loop.create_future()
        self.finished = asyncio.Event()
        self.bytes = {"client": 0, "device": 0}
        self.started = self.last_activity = time.monotonic()
        self.terminal = config["protocol"] == "SSH"  # cra-cloud is the SSH client: the client gets a terminal
        self.terminal_size = ssh_terminal.DEFAULT_SIZE

    def join(self, device, device_request):
        self.sides["device"] = (device, device_request)
        self.last_activity = time.monotonic()
        if not self.device_joined.done():  # a session that ended while the device upgraded cancelled it
            self.device_joined.set_result(device)

    def describe(self):
        """What a log line needs to tie a session to its device, configuration and operation."""
        return (f"tenant {self.tenant}, device {self.device_id}, configuration {self.config['id']} "
                f"'{self.config['name']}' {self.config['hostname']}:{self.config['port']}, "
                f"operation {self.operation_id}, key {masked(self.key)}")


def _websocket():
    # aiohttp refuses a frame of max_msg_size bytes or more; MAX_FRAME itself must cross.
    return web.WebSocketResponse(protocols=("binary",), compress=False, max_msg_size=MAX_FRAME + 1)


class Relay:
    def __init__(self, store, operation_timeout, idle_timeout):
        self._store = store
        self._operation_timeout = operation_timeout
        self._idle_timeout = idle_timeout
        self._waiting = {}
        self._sessions = set()

    def routes(self):
        return [web.get("/service/remoteaccess/client/{deviceId}/configurations/{configId}", self.client_endpoint),
                web.get("/service/remoteaccess/device/{key}", self.device_endpoint)]

    async def client_endpoint(self, request):
        principal = request["principal"]
        require_remote_access_admin(principal)
        device_id = int(visible_managed_object(request, path_id(request, "deviceId", "inventory", "Device"))["id"])
        config = known_configuration(request, device_id)
        size = ssh_terminal.terminal_size(request.query) if config["protocol"] == "SSH" else None
        timeout = operation_timeout(self._store, principal.tenant, self._operation_timeout)
        key = str(uuid.uuid4())
        operation = new_operation(request, principal.tenant, device_id, {
            "description": f"Connect to {config['name']} ({config['hostname']}:{config['port']})",
            "c8y_RemoteAccessConnect": {"hostname": config["hostname"], "port": config["port"], "connectionKey": key}})
        client = _websocket()
        await client.prepare(request)
        session = Session(principal.tenant, device_id, config, operation["id"], key, client, request)
        session.terminal_size = size or session.terminal_size
        self._waiting[key] = session
        self._sessions.add(session)
        log.info("session %d started by %s: %s; waiting up to %g s for the device",
                 session.number, principal.user, session.describe(), timeout)
        try:
            await self._run(session, timeout)
        finally:
            self._waiting.pop(key, None)
            self._sessions.discard(session)
            session.finished.set()
        return client

    async def device_endpoint(self, request):
        key = request.match_info["key"]
        session = self._waiting.get(key)
        if session is None or session.tenant != request["principal"].tenant:
            raise not_found("remoteaccess", f"No remote access session waits for connection key {masked(key)}; "
                                            "a key is valid once, while its client is connected")
        del self._waiting[key]
        device = _websocket()
        device.headers["Sec-WebSocket-Protocol"] = "binary"  # as the platform does, offered or not
        await device.prepare(request)
        session.join(device, request)
        await session.finished.wait()
        return device

    async def shutdown(self):
        """Close every session with 1001; before aiohttp's cleanup, which stops reading close replies."""
        for session in list(self._sessions):
            if not session.stop.done():
                session.stop.set_result(Ending("cloud", 1001, "the cloud is shutting down"))
        await asyncio.gather(*(s.finished.wait() for s in list(self._sessions)))

    async def _run(self, session, timeout):
        if session.terminal:
            carriers = [ssh_terminal.run(session, self._store, session.sides["client"][1].app["vault"], timeout)]
        else:
            carriers = [self._pump(session, "client", "device"), self._pump(session, "device", "client")]
        tasks = [asyncio.ensure_future(c) for c in (*carriers, self._watch(session, timeout), session.stop)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._end(session, next(iter(done)).result())

    async def _pump(self, session, source, target):
        """Frames from one side to the other, one at a time; returns the Ending that stopped them."""
        if source == "device":
            await session.device_joined
        reader = session.sides[source][0]
        while True:
            message = await reader.receive()
            if message.type is WSMsgType.BINARY:
                await session.device_joined
                try:
                    # Shielded: cancelling a write cancels aiohttp's drain for the whole connection,
                    # and the close that follows in _end would fail with it.
                    await asyncio.shield(session.sides[target][0].send_bytes(message.data))
                except ConnectionError:
                    return Ending(target, 1006, f"the {target}'s connection dropped", abrupt=True)
                session.bytes[source] += len(message.data)
                session.last_activity = time.monotonic()
            elif message.type is WSMsgType.TEXT:
                return text_frame_ending(source)
            else:
                return ending_of(source, message)

    async def _watch(self, session, timeout):
        """Ends a session whose device does not come in time, or whose data stops flowing."""
        try:
            await asyncio.wait_for(asyncio.shield(session.device_joined), timeout)
        except asyncio.TimeoutError:
            return Ending("timeout", 1011, f"the device did not connect within {timeout:g} s (remoteaccess.operation.timeout)")
        while True:
            idle = time.monotonic() - session.last_activity
            if idle >= self._idle_timeout:
                return Ending("idle", 1001, f"no data for {self._idle_timeout:g} s (idle timeout)")
            await asyncio.sleep(self._idle_timeout - idle)

    async def _end(self, session, ending):
        self._waiting.pop(session.key, None)
        if ending.by == "timeout":
            fail_operation(self._store, session.tenant, session.operation_id, ending.reason.capitalize())
        if session.terminal and ending.code != 1000 and not ending.abrupt:  # a client that closed is not told
            await _tell_error(session.sides["client"][0], ending.told or ending.reason)
        await asyncio.gather(*(_close(ws, request, ending) for ws, request in session.sides.values()))
        log.info("session %d ended: %s; client->device %d bytes, device->client %d bytes, %.1f s; %s",
                 session.number, ending.reason, session.bytes["client"], session.bytes["device"],
                 time.monotonic() - session.started, session.describe())


async def _tell_error(ws, sentence):
    """The whole sentence, in a text frame the page shows; the close reason that follows is cut to 123 bytes."""
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.send_str(json.dumps({"error": sentence})), CLOSE_TIMEOUT)
    except (asyncio.TimeoutError, ConnectionError):
        pass


async def _close(ws, request, ending):
    """Close one side with the ending's code; drop it instead when the ending was a drop, or when
    the side does not take the close within CLOSE_TIMEOUT (a peer that stopped reading)."""
    if ws.closed:
        return
    if not ending.abrupt:
        try:
            await asyncio.wait_for(ws.close(code=ending.code, message=(ending.told or ending.reason).encode()[:123]),
                                   CLOSE_TIMEOUT)
            return
        except (asyncio.TimeoutError, ConnectionError):
            pass
    if request.transport is not None:
        request.transport.abort()
