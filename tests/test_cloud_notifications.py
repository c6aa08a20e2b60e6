"""cra-cloud's real-time notifications for operations (docs/wire.md section 3), through a real cra-cloud process.

An agent sees only the Bayeux answers to its POSTs to /notification/operations: their shapes, when
a held connect comes back and with what. These tests check exactly that. A connect is known to be
held when it has not come back within HELD: the cloud answers every connect it does not hold at once.
"""
import concurrent.futures
import json
import re
import time

import pytest
import requests

from toolkit.programs import ADMIN, ADMIN_T200, BOOTSTRAP, DEVICE, DEVICE_T200, OTHER_DEVICE, Cloud, basic

PATH = "/notification/operations"
ERROR_MEDIA_TYPE = "application/vnd.com.nsn.cumulocity.error+json"
HOLD = 30  # s: long enough that a connect answered sooner was answered by something else than its hold
HELD = 0.5  # s without an answer after which a connect counts as held
PROMPTLY = 5  # s within which an answer "at once" or "on an event" must come
MAX_INTERVAL = 10  # s: the platform's (CometD's) limit between a connect answer and the next connect
CLIENT_ID = re.compile(r"^[0-9a-f]{32}$")
EXPECTED_ADVICE = {"reconnect": "retry", "interval": 0, "timeout": HOLD * 1000}
UNKNOWN_CLIENT_ADVICE = {"reconnect": "handshake", "interval": 0}


class Bayeux:
    """One Bayeux conversation as an agent holds it: its own HTTP session, credentials and clientId."""

    def __init__(self, cloud, auth=DEVICE, headers=None):
        self.cloud = cloud
        self.session = requests.Session()
        self.session.headers.update({"Authorization": basic(auth), "Accept": "application/json", **(headers or {})})
        self.client_id = None
        self._ids = iter(range(1, 1000))

    def post(self, *messages, timeout=HOLD + 10, **kwargs):
        return self.session.post(self.cloud.url + PATH, json=list(messages), timeout=timeout, **kwargs)

    def answer(self, *messages, **kwargs):
        """The answer array, after checking it is one: 200, application/json, a list of objects."""
        response = self.post(*messages, **kwargs)
        assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
        assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
        body = response.json()
        assert isinstance(body, list) and all(isinstance(m, dict) for m in body), body
        return body

    def message(self, channel, **fields):
        return {"channel": channel, "id": str(next(self._ids)), **({"clientId": self.client_id} if self.client_id else {}),
                **fields}

    def handshake(self):
        reply = only(self.answer(self.message("/meta/handshake", version="1.0", supportedConnectionTypes=["long-polling"])))
        assert reply["successful"] is True, reply
        self.client_id = reply["clientId"]
        return reply

    def subscribe(self, device_id):
        return only(self.answer(self.message("/meta/subscribe", subscription=f"/{device_id}")))

    def connect(self, timeout_ms=None):
        """The whole answer to one connect: deliveries, then the connect's reply."""
        advice = {} if timeout_ms is None else {"advice": {"timeout": timeout_ms}}
        return self.answer(self.message("/meta/connect", connectionType="long-polling", **advice))

    def listening(self, device_id):
        """Handshaken, subscribed to the device and past the first connect (which the cloud never holds)."""
        self.handshake()
        assert self.subscribe(device_id)["successful"] is True
        assert connect_reply(self.connect())["successful"] is True
        return self


def only(answer):
    assert len(answer) == 1, answer
    return answer[0]


def connect_reply(answer):
    """The /meta/connect reply, which comes last, after any deliveries."""
    assert answer and answer[-1]["channel"] == "/meta/connect", answer
    return answer[-1]


def deliveries(answer):
    return answer[:-1]


def platform_error(response, status, error):
    """The body of an error answer, after checking it is the platform's error shape (docs/wire.md section 1)."""
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    assert response.headers["Content-Type"].startswith(ERROR_MEDIA_TYPE), response.headers["Content-Type"]
    body = response.json()
    assert body["error"] == error and body["message"] and body["info"], body
    return body


@pytest.fixture
def pool():
    """Threads for the connects a test holds; every result is awaited with a bound."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as executor:
        yield executor


def held(pool, call, *args, **kwargs):
    """Start a call on a thread and check it is still waiting after HELD seconds: its future."""
    future = pool.submit(call, *args, **kwargs)
    time.sleep(HELD)
    assert not future.done(), f"answered at once: {future.result()}"
    return future


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cloud (hold HOLD s) for the tests whose clients leave nothing behind that others could meet."""
    instance = Cloud(tmp_path_factory.mktemp("shared"), args=["--notification-hold", str(HOLD)]).start()
    instance.ids = {"gw1": instance.device_id("gw-001"), "gw2": instance.device_id("gw-002"),
                    "gw900": instance.device_id("gw-900", auth=ADMIN_T200)}
    yield instance
    instance.stop()


def create_operation(cloud, device_id, **fragments):
    response = cloud.api(ADMIN).post("/devicecontrol/operations", json={"deviceId": device_id, **(fragments or {"c8y_Restart": {}})})
    assert response.status_code == 201, response.text
    return response.json()


def as_the_device_reads_it(cloud, operation_id):
    return cloud.api(DEVICE).get(f"/devicecontrol/operations/{operation_id}").json()


# the conversation


def test_handshake_subscribe_and_first_connect_have_the_wire_shape(shared):
    """The first connect after a handshake is answered at once; every reply carries the request's id."""
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared)
    handshake = bayeux.handshake()
    assert handshake == {"channel": "/meta/handshake", "id": "1", "version": "1.0", "minimumVersion": "1.0",
                         "supportedConnectionTypes": ["long-polling"], "clientId": bayeux.client_id,
                         "successful": True, "advice": EXPECTED_ADVICE}
    assert CLIENT_ID.match(bayeux.client_id)
    assert Bayeux(shared).handshake()["clientId"] != bayeux.client_id
    assert bayeux.subscribe(gw1) == {"channel": "/meta/subscribe", "id": "2", "clientId": bayeux.client_id,
                                     "subscription": f"/{gw1}", "successful": True}
    started = time.monotonic()
    assert bayeux.connect() == [{"channel": "/meta/connect", "id": "3", "clientId": bayeux.client_id,
                                 "successful": True, "advice": EXPECTED_ADVICE}]
    assert time.monotonic() - started < PROMPTLY
    assert only(bayeux.answer(bayeux.message("/meta/unsubscribe", subscription=f"/{gw1}"))) == {
        "channel": "/meta/unsubscribe", "id": "4", "clientId": bayeux.client_id, "subscription": f"/{gw1}", "successful": True}
    assert only(bayeux.answer(bayeux.message("/meta/disconnect"))) == {
        "channel": "/meta/disconnect", "id": "5", "clientId": bayeux.client_id, "successful": True}


def test_a_held_connect_is_answered_by_an_operation_created_over_rest(shared, pool):
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared).listening(gw1)
    connect = held(pool, bayeux.connect)
    created = create_operation(shared, gw1, description="restart", c8y_Restart={})
    answer = connect.result(PROMPTLY)
    (delivery,) = deliveries(answer)
    assert set(delivery) == {"channel", "data", "id"} and isinstance(delivery["id"], str) and delivery["id"]
    assert delivery["channel"] == f"/{gw1}" and delivery["data"] == as_the_device_reads_it(shared, created["id"])
    assert delivery["data"]["self"] == f"{shared.url}/devicecontrol/operations/{created['id']}"
    assert connect_reply(answer) == {"channel": "/meta/connect", "id": "4", "clientId": bayeux.client_id,
                                     "successful": True, "advice": EXPECTED_ADVICE}


def test_a_held_connect_is_answered_when_a_user_opens_a_configuration(shared, pool):
    """The relay's c8y_RemoteAccessConnect operation is published like any other."""
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared).listening(gw1)
    connect = held(pool, bayeux.connect)
    user = shared.open_client(gw1, shared.config_id(gw1))
    try:
        (delivery,) = deliveries(connect.result(PROMPTLY))
        operation = delivery["data"]
        assert delivery["channel"] == f"/{gw1}" and operation["status"] == "PENDING"
        assert operation["c8y_RemoteAccessConnect"]["hostname"] == "127.0.0.1"
        assert operation["c8y_RemoteAccessConnect"]["port"] == 22
        assert operation == as_the_device_reads_it(shared, operation["id"])
    finally:
        user.close()


def test_operations_created_between_connects_wait_for_the_next_connect(shared):
    """None is lost while the agent is between two connects, and the next connect brings them all at once."""
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared).listening(gw1)
    made = [create_operation(shared, gw1)["id"] for _ in range(3)]
    started = time.monotonic()
    answer = bayeux.connect()
    assert time.monotonic() - started < PROMPTLY
    assert [d["data"]["id"] for d in deliveries(answer)] == made
    assert len({d["id"] for d in deliveries(answer)}) == 3
    assert connect_reply(answer)["successful"] is True
    assert deliveries(bayeux.connect(timeout_ms=0)) == []


def test_an_operation_for_another_device_does_not_answer_the_connect(shared, pool):
    gw1, gw2 = shared.ids["gw1"], shared.ids["gw2"]
    bayeux = Bayeux(shared).listening(gw1)
    connect = held(pool, bayeux.connect, timeout_ms=2000)
    create_operation(shared, gw2)
    assert deliveries(connect.result(PROMPTLY)) == []


def test_a_connect_advice_timeout_shortens_the_hold_but_never_lengthens_it(make_cloud):
    cloud = make_cloud(args=["--notification-hold", "1.5"])
    bayeux = Bayeux(cloud).listening(cloud.device_id())
    for asked, lasts in ((None, 1.5), (500, 0.5), (0, 0), (60000, 1.5)):
        started = time.monotonic()
        reply = connect_reply(bayeux.connect(timeout_ms=asked))
        elapsed = time.monotonic() - started
        assert lasts - 0.1 <= elapsed < lasts + 1.5, f"advice.timeout {asked}: answered after {elapsed:.2f} s"
        assert reply == {"channel": "/meta/connect", "id": reply["id"], "clientId": bayeux.client_id, "successful": True,
                         "advice": {"reconnect": "retry", "interval": 0, "timeout": 1500}}


def test_a_second_connect_answers_the_held_one_at_once(shared, pool):
    """As CometD does: the earlier connect comes back with 408 and no body, the newer one is held."""
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared).listening(gw1)
    first = held(pool, bayeux.post, bayeux.message("/meta/connect", connectionType="long-polling"))
    second = held(pool, bayeux.connect)
    superseded = first.result(PROMPTLY)
    assert superseded.status_code == 408 and superseded.content == b""
    created = create_operation(shared, gw1)
    assert [d["data"]["id"] for d in deliveries(second.result(PROMPTLY))] == [created["id"]]


def test_a_connect_that_shares_its_request_is_answered_at_once(shared):
    """CometD holds a connect only when it comes alone: answers come as one array, in the order asked."""
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared).listening(gw1)
    started = time.monotonic()
    answer = bayeux.answer(bayeux.message("/meta/subscribe", subscription=f"/{gw1}"),
                           bayeux.message("/meta/connect", connectionType="long-polling"))
    assert time.monotonic() - started < PROMPTLY
    assert [(m["channel"], m["successful"]) for m in answer] == [("/meta/subscribe", True), ("/meta/connect", True)]


# who may listen to what


@pytest.mark.parametrize("auth, device, error", [
    (DEVICE, "gw1", None),
    (ADMIN, "gw1", None),
    (ADMIN, "gw2", None),
    (OTHER_DEVICE, "gw2", None),
    (DEVICE, "gw2", "403:denied_by_security_policy:subscribe_denied"),
    (OTHER_DEVICE, "gw1", "403:denied_by_security_policy:subscribe_denied"),
    (ADMIN, "gw900", "404::no device has this id"),
    (DEVICE_T200, "gw1", "404::no device has this id"),
    (ADMIN, "999999", "404::no device has this id"),
    (ADMIN, "abc", "404::no device has this id"),
], ids=lambda v: v if isinstance(v, str) else v[0] if isinstance(v, tuple) else "ok")
def test_a_device_user_hears_only_of_its_own_devices_a_person_of_its_tenant(shared, auth, device, error):
    device_id = shared.ids.get(device, device)
    bayeux = Bayeux(shared, auth)
    bayeux.handshake()
    reply = bayeux.subscribe(device_id)
    expected = {"channel": "/meta/subscribe", "id": "2", "clientId": bayeux.client_id, "subscription": f"/{device_id}"}
    assert reply == {**expected, **({"successful": False, "error": error} if error else {"successful": True})}


def test_a_refused_subscription_hears_nothing(shared):
    gw1, gw2 = shared.ids["gw1"], shared.ids["gw2"]
    bayeux = Bayeux(shared, DEVICE).listening(gw1)
    assert bayeux.subscribe(gw2)["successful"] is False
    create_operation(shared, gw2)
    assert deliveries(bayeux.connect(timeout_ms=300)) == []


@pytest.mark.parametrize("auth", ["basic", "bearer", "cookie"])
def test_every_sign_in_form_of_the_rest_api_works(shared, auth):
    login = {"grant_type": "PASSWORD", "username": DEVICE[0], "password": DEVICE[1]}
    if auth == "basic":
        bayeux = Bayeux(shared)
    elif auth == "bearer":
        token = requests.post(shared.url + "/tenant/oauth/token", data=login, timeout=10).json()["access_token"]
        bayeux = Bayeux(shared, headers={"Authorization": f"Bearer {token}"})
    else:
        cookies = requests.post(shared.url + "/tenant/oauth", data=login, timeout=10).cookies
        bayeux = Bayeux(shared)
        del bayeux.session.headers["Authorization"]
        bayeux.session.cookies.set("authorization", cookies["authorization"])
        bayeux.session.headers["X-XSRF-TOKEN"] = cookies["XSRF-TOKEN"]
    bayeux.listening(shared.ids["gw1"])


@pytest.mark.parametrize("credentials, status, error", [
    (None, 401, "security/Unauthorized"),
    (basic((DEVICE[0], "wrong")), 401, "security/Unauthorized"),
    (basic(BOOTSTRAP), 403, "security/Forbidden"),
], ids=["none", "wrong-password", "bootstrap-user"])
def test_unauthenticated_or_bootstrap_requests_are_refused_as_everywhere(shared, credentials, status, error):
    headers = {"Accept": "application/json", **({"Authorization": credentials} if credentials else {})}
    response = requests.post(shared.url + PATH, json=[{"channel": "/meta/handshake", "version": "1.0"}],
                             headers=headers, timeout=10)
    platform_error(response, status, error)
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="Cumulocity"'


# clients that are gone


@pytest.mark.parametrize("channel, fields", [
    ("/meta/connect", {"connectionType": "long-polling"}),
    ("/meta/subscribe", {"subscription": "/1"}),
    ("/meta/unsubscribe", {"subscription": "/1"}),
    ("/meta/disconnect", {}),
])
@pytest.mark.parametrize("client_id", ["never-handed-out", "0" * 32, None, ["a list"]], ids=["made-up", "zeros", "none", "list"])
def test_an_unknown_client_id_is_402_with_advice_to_handshake(shared, channel, fields, client_id):
    message = {"channel": channel, "id": "7", **fields, **({"clientId": client_id} if client_id else {})}
    assert Bayeux(shared).answer(message) == [{"channel": channel, "id": "7", "successful": False,
                                               "error": "402::Unknown client", "advice": UNKNOWN_CLIENT_ADVICE}]


def test_a_client_id_is_unknown_to_every_other_user(shared):
    owner = Bayeux(shared, DEVICE)
    owner.handshake()
    for auth in (ADMIN, OTHER_DEVICE, DEVICE_T200):
        intruder = Bayeux(shared, auth)
        intruder.client_id = owner.client_id
        assert connect_reply(intruder.connect())["error"] == "402::Unknown client"
    assert connect_reply(owner.connect())["successful"] is True


def test_a_client_without_a_connect_for_10_s_is_forgotten(make_cloud, pool):
    """CometD's maxInterval: counted from the handshake answer or the last connect answer, never while a connect is held."""
    cloud = make_cloud(args=["--notification-hold", "3"])
    gw1 = cloud.device_id()
    idle_after_connect = Bayeux(cloud).listening(gw1)
    idle_after_handshake = Bayeux(cloud)
    idle_after_handshake.handshake()
    slow = Bayeux(cloud).listening(gw1)
    busy = Bayeux(cloud).listening(gw1)

    def keep_connecting(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert connect_reply(busy.connect())["successful"] is True  # held 3 s each

    busy_connects = pool.submit(keep_connecting, MAX_INTERVAL + 1)
    time.sleep(MAX_INTERVAL - 2)
    assert connect_reply(slow.connect(timeout_ms=0))["successful"] is True
    time.sleep(3)
    busy_connects.result(PROMPTLY + 3)
    for gone in (idle_after_connect, idle_after_handshake):
        assert connect_reply(gone.connect())["error"] == "402::Unknown client"
    for alive in (slow, busy):
        assert connect_reply(alive.connect(timeout_ms=0))["successful"] is True
    expired = [line for line in cloud.log().splitlines() if "expired" in line]
    assert len(expired) == 2 and all(f"no /meta/connect within {MAX_INTERVAL} s" in line for line in expired), expired


def test_client_ids_do_not_survive_a_restart(cloud):
    gw1 = cloud.device_id()
    bayeux = Bayeux(cloud).listening(gw1)
    cloud.restart()
    assert connect_reply(bayeux.connect())["error"] == "402::Unknown client"
    assert bayeux.subscribe(gw1)["error"] == "402::Unknown client"
    bayeux.listening(gw1)
    created = create_operation(cloud, gw1)
    assert [d["data"]["id"] for d in deliveries(bayeux.connect())] == [created["id"]]


def test_disconnect_ends_the_client_and_its_held_connect(shared, pool):
    """The held connect is answered as CometD answers it for a session that has ended: advice not to reconnect."""
    bayeux = Bayeux(shared).listening(shared.ids["gw1"])
    connect = held(pool, bayeux.connect)
    assert only(bayeux.answer(bayeux.message("/meta/disconnect")))["successful"] is True
    assert connect_reply(connect.result(PROMPTLY)) == {"channel": "/meta/connect", "id": "4", "clientId": bayeux.client_id,
                                                       "successful": True, "advice": {"reconnect": "none"}}
    assert connect_reply(bayeux.connect())["error"] == "402::Unknown client"


def test_the_eleventh_client_of_a_user_on_a_channel_closes_the_oldest(make_cloud, pool):
    """The platform's limit: 10 connections per user and subscription channel; a new one closes the oldest."""
    cloud = make_cloud(args=["--notification-hold", str(HOLD)])
    gw1 = cloud.device_id()
    oldest = Bayeux(cloud).listening(gw1)
    others = [Bayeux(cloud).listening(gw1) for _ in range(9)]
    person = Bayeux(cloud, ADMIN).listening(gw1)  # another user: not counted
    connect = held(pool, oldest.connect)
    assert oldest.subscribe(gw1)["successful"] is True  # subscribing again counts once
    assert not connect.done()
    newest = Bayeux(cloud).listening(gw1)
    assert connect_reply(connect.result(PROMPTLY))["advice"] == {"reconnect": "none"}
    assert connect_reply(oldest.connect())["error"] == "402::Unknown client"
    created = create_operation(cloud, gw1)
    for listener in others + [person, newest]:
        assert [d["data"]["id"] for d in deliveries(listener.connect(timeout_ms=0))] == [created["id"]]
    closed = [line for line in cloud.log().splitlines() if " closed: " in line]
    assert len(closed) == 1 and oldest.client_id[:4] in closed[0], closed


# the platform's rules for bodies


def test_without_an_accept_header_the_answer_is_empty_but_the_change_happens(shared):
    """The platform's documented rule for long polling: no Accept header, an empty 200."""
    gw1 = shared.ids["gw1"]
    bayeux = Bayeux(shared)
    bayeux.handshake()
    silent = bayeux.post(bayeux.message("/meta/subscribe", subscription=f"/{gw1}"), headers={"Accept": None})
    assert silent.status_code == 200 and silent.content == b""
    assert connect_reply(bayeux.connect())["successful"] is True
    created = create_operation(shared, gw1)
    assert [d["data"]["id"] for d in deliveries(bayeux.connect(timeout_ms=0))] == [created["id"]]
    silent = bayeux.post(bayeux.message("/meta/disconnect"), headers={"Accept": None})
    assert silent.status_code == 200 and silent.content == b""
    assert connect_reply(bayeux.connect())["error"] == "402::Unknown client"


@pytest.mark.parametrize("raw", [
    pytest.param(b"", id="empty"),
    pytest.param(b'[{"channel": "/meta/handshake"', id="truncated"),
    pytest.param(b"{channel: '/meta/handshake'}", id="not-json"),
    pytest.param(b"[]", id="empty-array"),
    pytest.param(b'"/meta/handshake"', id="string"),
    pytest.param(b"[5]", id="array-of-number"),
    pytest.param(b'[{"channel": "/meta/handshake"}, null]', id="array-with-null"),
    pytest.param(b'[{"channel": "/meta/handshake", "version": NaN}]', id="nan"),
    pytest.param(b'[{"channel": "\xff"}]', id="not-utf8"),
    pytest.param(b"[" * 50000 + b"]" * 50000, id="nested-50000-deep"),
])
def test_a_body_that_is_no_array_of_messages_is_400(shared, raw):
    response = Bayeux(shared).session.post(shared.url + PATH, data=raw, headers={"Content-Type": "application/json"}, timeout=10)
    platform_error(response, 400, "general/Bad Request")


def test_one_bare_message_is_taken_as_an_array_of_one_as_cometd_does(shared):
    response = Bayeux(shared).session.post(shared.url + PATH, json={"channel": "/meta/handshake", "version": "1.0"}, timeout=10)
    assert response.status_code == 200 and only(response.json())["successful"] is True


# An unsuccessful handshake still says what the server speaks, as Bayeux allows.
HANDSHAKE_DENIED = {"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                    "supportedConnectionTypes": ["long-polling"], "successful": False, "advice": {"reconnect": "none"}}


@pytest.mark.parametrize("message, reply", [
    ({"id": "9"}, {"id": "9", "successful": False, "error": "400::channel missing"}),
    ({"channel": 5, "id": "9"}, {"id": "9", "successful": False, "error": "400::channel missing"}),
    ({"channel": "/meta/handshake", "version": "2.0", "supportedConnectionTypes": ["long-polling"]},
     {**HANDSHAKE_DENIED, "error": "403:version:Handshake denied"}),
    ({"channel": "/meta/handshake", "version": 1, "supportedConnectionTypes": ["long-polling"]},
     {**HANDSHAKE_DENIED, "error": "403:version:Handshake denied"}),
    ({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]},
     {**HANDSHAKE_DENIED, "error": "403:supportedConnectionTypes:Handshake denied"}),
    ({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": "long-polling"},
     {**HANDSHAKE_DENIED, "error": "403:supportedConnectionTypes:Handshake denied"}),
    ({"channel": "/meta/subscribe", "clientId": "{client}"},
     {"channel": "/meta/subscribe", "clientId": "{client}", "successful": False, "error": "403::subscription_missing"}),
    ({"channel": "/meta/subscribe", "clientId": "{client}", "subscription": 5},
     {"channel": "/meta/subscribe", "clientId": "{client}", "successful": False, "error": "403::subscription_invalid"}),
    ({"channel": "/meta/subscribe", "clientId": "{client}", "subscription": {"/1": 1}},
     {"channel": "/meta/subscribe", "clientId": "{client}", "successful": False, "error": "403::subscription_invalid"}),
    ({"channel": "/meta/unsubscribe", "clientId": "{client}"},
     {"channel": "/meta/unsubscribe", "clientId": "{client}", "successful": False, "error": "403::subscription_missing"}),
    ({"channel": "/meta/replay", "clientId": "{client}"},
     {"channel": "/meta/replay", "successful": False, "error": "400::unknown meta channel"}),
    ({"channel": "/{gw1}", "clientId": "{client}", "data": {"c8y_Restart": {}}},
     {"channel": "/{gw1}", "successful": False, "error": "403:denied_by_security_policy:publish denied"}),
], ids=["no-channel", "channel-a-number", "version-2", "version-a-number", "websocket-only", "types-a-string",
        "subscription-missing", "subscription-a-number", "subscription-an-object", "unsubscribe-missing",
        "unknown-meta-channel", "publish"])
def test_messages_the_cloud_cannot_follow_get_a_bayeux_error(shared, message, reply):
    """Answered in the array like any other message, never a 500: the client sees which message and why."""
    bayeux = Bayeux(shared)
    bayeux.handshake()

    def filled(template):
        return json.loads(json.dumps(template).replace("{gw1}", shared.ids["gw1"]).replace("{client}", bayeux.client_id))

    assert only(bayeux.answer(filled(message))) == filled(reply)
    assert connect_reply(bayeux.connect())["successful"] is True


def test_a_handshake_may_leave_out_version_and_connection_types_as_the_platforms_example_does(shared):
    """The platform's API reference handshakes with {"channel", "version"} only, and CometD checks neither."""
    bayeux = Bayeux(shared)
    assert only(bayeux.answer({"channel": "/meta/handshake"}))["successful"] is True
    assert only(bayeux.answer({"channel": "/meta/handshake", "version": "1.0beta"}))["successful"] is True


def test_without_notifications_the_endpoint_is_404_and_operations_still_work(make_cloud):
    """As on a tenant, or behind a proxy, without the endpoint: the agent falls back to polling there."""
    cloud = make_cloud(args=["--without-notifications"])
    response = Bayeux(cloud).post({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]})
    platform_error(response, 404, "general/Not Found")
    create_operation(cloud, cloud.device_id())


# the process


def test_a_held_connect_does_not_delay_the_stop(make_cloud, pool):
    """SIGTERM answers held connects at once (402: the clientId dies with the process) and the cloud exits."""
    cloud = make_cloud(args=["--notification-hold", "60"])
    bayeux = Bayeux(cloud).listening(cloud.device_id())
    connect = held(pool, bayeux.connect)
    started = time.monotonic()
    assert cloud.stop() == 0
    assert time.monotonic() - started < PROMPTLY
    assert connect_reply(connect.result(PROMPTLY)) == {"channel": "/meta/connect", "id": "4", "successful": False,
                                                       "error": "402::Unknown client", "advice": UNKNOWN_CLIENT_ADVICE}


def test_the_log_has_one_line_per_handshake_and_none_per_connect(make_cloud):
    cloud = make_cloud(args=["--notification-hold", "1"])
    bayeux = Bayeux(cloud).listening(cloud.device_id())
    for _ in range(3):
        bayeux.connect(timeout_ms=0)
    only(bayeux.answer(bayeux.message("/meta/disconnect")))
    lines = [line for line in cloud.log().splitlines() if "notification client" in line]
    assert len(lines) == 2, lines
    assert lines[0].endswith(f"notification client {bayeux.client_id[:4]}... of t100/device_gw-001: handshake")
    assert lines[1].endswith("disconnect")
    assert bayeux.client_id not in cloud.log()
