"""The platform as the tests use it: a scripted stand-in for a platform that answers what a test
says, the agent's own view of its cloud, and the steps a user or an administrator takes on the
real cra-cloud: configurations, operations, users' tools connected through it, and the check
that a tunnel works end to end.
"""
import contextlib
import http.server
import json
import threading
import uuid
from urllib.parse import parse_qs, urlsplit

from toolkit.programs import ADMIN, wait_for_status
from toolkit.servers import ACCEPT_POLL, EchoServer
from toolkit.sockets import LOCALHOST
from toolkit.waiting import join_all

from cra import config as agent_config_module

# A platform that answers what the test scripts: (status, content type, body bytes), or one of these.
HANG = "hang"  # keep the request waiting (until the server closes, at most HANG_LIMIT s)
DROP = "drop"  # close the connection without an answer
HANG_LIMIT = 5


def json_answer(status, body):
    return status, "application/json", json.dumps(body).encode()


def text_answer(status, text, content_type="text/html"):
    return status, content_type, text.encode()


class ScriptedPlatform:
    """An HTTP server on 127.0.0.1 that answers every request with answer(method, path, query)."""

    def __init__(self, answer):
        platform = self
        self.requests = []
        self._closing = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                platform.requests.append((self.command, parts.path, query))
                reply = answer(self.command, parts.path, query)
                if reply == HANG:
                    platform._closing.wait(HANG_LIMIT)
                    return
                if reply == DROP:
                    return
                status, content_type, body = reply
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self._server.daemon_threads = False  # server_close() joins them; each ends within HANG_LIMIT
        self.url = f"http://{LOCALHOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(ACCEPT_POLL,),
                                        name="scripted-platform", daemon=True)
        self._thread.start()

    def close(self):
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        join_all([self._thread])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cloud_access(tmp_path, url, **c8y):
    """The agent's CloudAccess, loaded from an INI file as the agent loads it (gw-001 by default)."""
    options = {"url": url, "tenant": "t100", "user": "device_gw-001", "password": "dev-pw",
               "external_id": "gw-001", **c8y}
    path = tmp_path / f"direct-{uuid.uuid4().hex[:8]}.conf"
    path.write_text("[c8y]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return agent_config_module.load(path, environ={}).cloud


# The cloud, as its users and administrators use it.


def add_configuration(cloud, device_id, hostname, port, **fields):
    """A remote access configuration a user can connect to (PASSTHROUGH unless `fields` say otherwise); its id."""
    body = {"name": f"target-{uuid.uuid4().hex[:8]}", "hostname": hostname, "port": port, **fields}
    answer = cloud.api(ADMIN).post(f"/service/remoteaccess/devices/{device_id}/configurations", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def create_operation(cloud, device_id, fragment):
    """An operation as an administrator (or a faulty integration) creates it, malformed or not; its id."""
    answer = cloud.api(ADMIN).post("/devicecontrol/operations",
                                   json={"deviceId": device_id, "c8y_RemoteAccessConnect": fragment})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def operation(cloud, op_id):
    return cloud.api(ADMIN).get(f"/devicecontrol/operations/{op_id}").json()


def latest_operation(cloud, device_id):
    ops = cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": device_id, "pageSize": 1, "revert": "true"}).json()["operations"]
    assert ops, f"device {device_id} has no operation"
    return ops[0]


class User:
    """A user's tool connected to one configuration, and the operation its connecting created."""

    def __init__(self, cloud, device_id, config_id):
        self.ws = cloud.open_client(device_id, config_id)
        self.ws.settimeout(10)
        op = latest_operation(cloud, device_id)
        self.op_id = op["id"]
        self.connection_key = op["c8y_RemoteAccessConnect"]["connectionKey"]

    def echo(self, payload):
        """What comes back through the tunnel for `payload`, frames joined."""
        self.ws.send_binary(payload)
        received = b""
        for _ in range(len(payload)):
            if len(received) >= len(payload):
                break
            received += self.ws.recv()
        return received

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)


class Users:
    """Every user's tool a test opened, all closed when it ends."""

    def __init__(self):
        self._opened = []

    def connect(self, cloud, device_id, config_id):
        user = User(cloud, device_id, config_id)
        self._opened.append(user)
        return user

    def waiting_key(self, cloud):
        """A connection key a real client waits on that no agent will take: gw-002's, which has none.

        The cloud matches a device leg to a session by key and tenant, so the agent under test
        (or a test playing it) can join it; the user on the other end sees what arrives."""
        device_id = cloud.device_id("gw-002")
        return self.connect(cloud, device_id, add_configuration(cloud, device_id, LOCALHOST, 22))

    def close(self):
        for user in self._opened:
            user.close()


def assert_tunnel_works(cloud, users, external_id="gw-001", log=None, count=1):
    """What a user checks: `count` new sessions at once reach a service beside the gateway, each
    operation is SUCCESSFUL and 16 KiB come back intact; their operations' ids. `log`, a file, is
    shown when one is not."""
    device_id = cloud.device_id(external_id)
    with EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        opened = [users.connect(cloud, device_id, config_id) for _ in range(count)]
        payload = bytes(range(256)) * 64
        for user in opened:
            op = wait_for_status(cloud, user.op_id)
            assert op["status"] == "SUCCESSFUL", f"{op.get('failureReason')}\n{log.read_text() if log else ''}"
            assert user.echo(payload) == payload
            user.close()
    return [user.op_id for user in opened]
