"""Who may do what on cra-cloud (docs/wire.md section 1): credentials, roles, device scope, tenants, secrets in the log.

Every check goes through the real process, the way the agent (Basic, Bearer) or a user's tool
(Basic, Bearer, cookie) would.
"""
import base64
import json
import secrets
import uuid

import pytest
import websocket

from toolkit.programs import (ADMIN, ADMIN_T200, BOOTSTRAP, DEVICE, DEVICE_T200, OTHER_DEVICE, SEED, VIEWER, Cloud,
                              basic, receive_close)

ERROR_MEDIA_TYPE = "application/vnd.com.nsn.cumulocity.error+json;charset=UTF-8;ver=0.9"
LOGIN_FORM = {"grant_type": "PASSWORD", "username": ADMIN[0], "password": ADMIN[1]}
# admin, device user and device serial of each seeded tenant
TENANTS = {"t100": (ADMIN, DEVICE, "gw-001"), "t200": (ADMIN_T200, DEVICE_T200, "gw-900")}
DIRECTIONS = pytest.mark.parametrize("owner, intruder", [("t100", "t200"), ("t200", "t100")],
                                     ids=["t100-data-t200-user", "t200-data-t100-user"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cloud for the checks that leave nothing behind when the cloud is right, so the module stays quick."""
    instance = Cloud(tmp_path_factory.mktemp("shared")).start()
    yield instance
    instance.stop()


def assert_error(response, status, error=None):
    """Every 4xx carries the platform's error body, so clients can show what went wrong."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == ERROR_MEDIA_TYPE
    body = response.json()
    assert {"error", "message", "info"} <= set(body)
    if error:
        assert body["error"] == error


def assert_unauthorized(response):
    assert_error(response, 401, "security/Unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Cumulocity"'


def upgrade_status(connect):
    """101 when the WebSocket opened (it is closed again), else the status the upgrade was refused with."""
    try:
        ws = connect()
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    ws.close()
    return 101


def client_status(cloud, **options):
    device_id = cloud.device_id()
    return upgrade_status(lambda: cloud.open_client(device_id, cloud.config_id(device_id), **options))


def create_operation(cloud, device_id, auth=ADMIN):
    response = cloud.api(auth).post("/devicecontrol/operations", json={"deviceId": device_id, "c8y_Restart": {}})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def operations(cloud, auth, **params):
    response = cloud.api(auth).get("/devicecontrol/operations", params={"pageSize": 2000, **params})
    assert response.status_code == 200, response.text
    return response.json()["operations"]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_claims(token, **claims):
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{b64url(json.dumps({**decoded, **claims}).encode())}.{signature}"


# Basic


@pytest.mark.parametrize("auth, serial", [(ADMIN, "gw-001"), (VIEWER, "gw-001"), (DEVICE, "gw-001"),
                                          (ADMIN_T200, "gw-900"), (DEVICE_T200, "gw-900")],
                         ids=["t100-admin", "t100-viewer", "t100-device", "t200-admin", "t200-device"])
def test_basic_auth_with_tenant_prefix(shared, auth, serial):
    response = shared.api(auth).get(f"/identity/externalIds/c8y_Serial/{serial}")
    assert response.status_code == 200, response.text
    assert response.json()["externalId"] == serial


def test_bare_user_is_accepted_when_the_cloud_has_one_tenant(make_cloud):
    """With one tenant the cloud is that tenant's own domain, where the platform takes a bare user."""
    cloud = make_cloud(seed=[SEED[0]])
    response = cloud.api(("admin", "admin-pw")).get("/identity/externalIds/c8y_Serial/gw-001")
    assert response.status_code == 200, response.text
    assert response.json()["externalId"] == "gw-001"
    assert_unauthorized(cloud.api(("admin", "wrong-pw")).get("/identity/externalIds/c8y_Serial/gw-001"))


@pytest.mark.parametrize("authorization", [
    basic(("t100/admin", "wrong-pw")),
    basic(("t100/nobody", "admin-pw")),
    basic(("t999/admin", "admin-pw")),
    basic(("admin", "admin-pw")),
    "Basic not*base64!",
    "Basic " + base64.b64encode(b"t100/admin-without-colon").decode(),
    "Basic " + base64.b64encode(b"t100/\xff\xfe:admin-pw").decode(),
    "Basic",
    "Bearer not-a-jwt",
    "Negotiate YWRtaW4=",
    None,
], ids=["wrong-password", "unknown-user", "unknown-tenant", "bare-user-with-two-tenants", "not-base64", "no-colon",
        "not-utf8", "basic-without-value", "bearer-garbage", "unknown-scheme", "no-header"])
def test_bad_credentials_are_refused_with_401(shared, authorization):
    """A bare user is ambiguous with two tenants: the cloud must not guess one."""
    headers = {"Authorization": authorization} if authorization else {}
    assert_unauthorized(shared.api(None).get("/inventory/managedObjects", headers=headers))


@pytest.mark.parametrize("connect", [
    lambda cloud, auth: cloud.open_client(cloud.device_id(), cloud.config_id(cloud.device_id()), auth=auth),
    lambda cloud, auth: cloud.open_device(str(uuid.uuid4()), auth=auth),
], ids=["client", "device"])
def test_websocket_upgrades_refuse_bad_credentials_with_401(shared, connect):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(shared, ("t100/admin", "wrong-pw")).close()
    assert refused.value.status_code == 401
    assert refused.value.resp_headers.get("www-authenticate") == 'Basic realm="Cumulocity"'


# Bearer and cookie (OAI-Secure)


def test_bearer_token_works_on_rest_and_the_client_websocket(cloud):
    response = cloud.api(None).post("/tenant/oauth/token", data=LOGIN_FORM)
    assert response.status_code == 200, response.text
    bearer = {"Authorization": "Bearer " + response.json()["access_token"]}
    answer = cloud.api(None).get("/identity/externalIds/c8y_Serial/gw-001", headers=bearer)
    assert answer.status_code == 200, answer.text
    assert client_status(cloud, auth=None, headers=bearer) == 101
    assert "c8y_RemoteAccessConnect" in cloud.pending_operation(cloud.device_id())


def test_token_endpoint_refuses_a_wrong_password(shared):
    assert_unauthorized(shared.api(None).post("/tenant/oauth/token", data={**LOGIN_FORM, "password": "wrong-pw"}))


@pytest.mark.parametrize("tamper", [
    lambda token: with_claims(token, sub="admin"),
    lambda token: b64url(b'{"alg": "none", "typ": "JWT"}') + "." + token.split(".")[1] + ".",
    lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"),
    lambda token: token.rsplit(".", 1)[0],
    lambda token: token[:-1] + "\u00e9",
], ids=["viewer-claims-admin", "unsigned", "signature-altered", "signature-dropped", "signature-non-ascii"])
def test_tampered_token_is_refused_with_401(shared, tamper):
    """A viewer's token must not become anything else; a bad token is a 401, never a server error."""
    token = shared.api(None).post("/tenant/oauth/token", data={
        **LOGIN_FORM, "username": VIEWER[0], "password": VIEWER[1]}).json()["access_token"]
    headers = {"Authorization": "Bearer " + tamper(token)}
    assert_unauthorized(shared.api(None).get("/identity/externalIds/c8y_Serial/gw-001", headers=headers))


def cookie_login(cloud):
    response = cloud.api(None).post("/tenant/oauth", data=LOGIN_FORM)
    assert response.status_code == 200, response.text
    assert {"authorization", "XSRF-TOKEN"} <= set(response.cookies.keys())
    return response.cookies["authorization"], response.cookies["XSRF-TOKEN"]


def test_cookie_with_xsrf_header_works_on_rest_and_the_client_websocket(cloud):
    jwt, xsrf = cookie_login(cloud)
    headers = {"Cookie": f"authorization={jwt}", "X-XSRF-TOKEN": xsrf}
    answer = cloud.api(None).get("/identity/externalIds/c8y_Serial/gw-001", headers=headers)
    assert answer.status_code == 200, answer.text
    assert client_status(cloud, auth=None, headers=headers) == 101


@pytest.mark.parametrize("xsrf", [None, "wrong-xsrf-token", "\u00e9"], ids=["no-header", "wrong", "non-ascii"])
def test_cookie_without_the_matching_xsrf_header_is_refused(shared, xsrf):
    """The cookie alone is what a cross-site request carries; only the header proves the caller read XSRF-TOKEN."""
    jwt, _ = cookie_login(shared)
    headers = {"Cookie": f"authorization={jwt}", **({"X-XSRF-TOKEN": xsrf} if xsrf else {})}
    assert_unauthorized(shared.api(None).get("/identity/externalIds/c8y_Serial/gw-001", headers=headers))
    assert client_status(shared, auth=None, headers=headers) == 401


def test_a_browsers_websocket_authenticates_by_query_parameters(cloud):
    """A browser's WebSocket sends the cookie but no header: the XSRF token comes as `XSRF-TOKEN`, or the
    token itself as `token`, in the query, as the platform's web UI sends them."""
    jwt, xsrf = cookie_login(cloud)
    assert client_status(cloud, auth=None, headers={"Cookie": f"authorization={jwt}"}, query={"XSRF-TOKEN": xsrf}) == 101
    assert client_status(cloud, auth=None, query={"token": jwt}) == 101
    assert client_status(cloud, auth=None, headers={"Cookie": f"authorization={jwt}"}, query={"XSRF-TOKEN": "wrong"}) == 401
    assert client_status(cloud, auth=None, query={"token": jwt[:-1] + ("A" if jwt[-1] != "A" else "B")}) == 401


def test_query_parameters_do_not_authenticate_rest_requests(shared):
    """Outside a WebSocket upgrade a client can send headers, and a URL ends up in logs and histories."""
    jwt, xsrf = cookie_login(shared)
    path = "/identity/externalIds/c8y_Serial/gw-001"
    assert_unauthorized(shared.api(None).get(path, params={"token": jwt}))
    assert_unauthorized(shared.api(None).get(path, params={"XSRF-TOKEN": xsrf}, headers={"Cookie": f"authorization={jwt}"}))


# the bootstrap user and device users


@pytest.mark.parametrize("method, path", [
    ("get", "/inventory/managedObjects"),
    ("post", "/inventory/managedObjects"),
    ("get", "/identity/externalIds/c8y_Serial/gw-001"),
    ("get", "/devicecontrol/operations"),
    ("post", "/devicecontrol/newDeviceRequests"),
    ("get", "/devicecontrol/newDeviceRequests"),
    ("get", "/service/remoteaccess/devices/1/configurations"),
])
def test_bootstrap_user_may_do_nothing_but_request_credentials(shared, method, path):
    assert_error(getattr(shared.api(BOOTSTRAP), method)(path, json={"id": "gw-777"}), 403)


def test_bootstrap_user_gets_credentials_once_the_device_is_accepted(cloud):
    """The one call the bootstrap user has must work, or devices could never register themselves."""
    bootstrap, admin = cloud.api(BOOTSTRAP), cloud.api(ADMIN)
    assert admin.post("/devicecontrol/newDeviceRequests", json={"id": "gw-777"}).status_code == 201
    assert_error(bootstrap.post("/devicecontrol/deviceCredentials", json={"id": "gw-777"}), 404)
    assert admin.put("/devicecontrol/newDeviceRequests/gw-777", json={"status": "ACCEPTED"}).status_code == 200
    response = bootstrap.post("/devicecontrol/deviceCredentials", json={"id": "gw-777"})
    assert response.status_code in (200, 201), response.text
    credentials = response.json()
    assert credentials["tenantId"] == "t100"
    user = (f"t100/{credentials['username']}", credentials["password"])
    assert cloud.api(user).get("/devicecontrol/operations").status_code == 200


@pytest.fixture
def two_operations(cloud):
    """(gw-001's id, an operation for it, gw-002's id, an operation for it), created by the admin."""
    gw1, gw2 = cloud.device_id("gw-001"), cloud.device_id("gw-002")
    return gw1, create_operation(cloud, gw1), gw2, create_operation(cloud, gw2)


def test_device_lists_only_its_own_operations(cloud, two_operations):
    gw1, op1, gw2, op2 = two_operations
    assert [(op["id"], op["deviceId"]) for op in operations(cloud, DEVICE)] == [(op1, gw1)]
    assert [(op["id"], op["deviceId"]) for op in operations(cloud, OTHER_DEVICE)] == [(op2, gw2)]
    assert operations(cloud, DEVICE, deviceId=gw2) == []


def test_device_cannot_read_or_change_another_devices_operation(cloud, two_operations):
    _, op1, _, op2 = two_operations
    device = cloud.api(DEVICE)
    assert device.get(f"/devicecontrol/operations/{op1}").status_code == 200
    assert device.put(f"/devicecontrol/operations/{op1}", json={"status": "EXECUTING"}).status_code == 200
    assert_error(device.get(f"/devicecontrol/operations/{op2}"), 403)
    assert_error(device.put(f"/devicecontrol/operations/{op2}", json={"status": "EXECUTING"}), 403)
    assert cloud.api(ADMIN).get(f"/devicecontrol/operations/{op2}").json()["status"] == "PENDING"


@pytest.mark.parametrize("path, body", [
    ("/devicecontrol/operations", {"deviceId": "{own}", "c8y_Restart": {}}),
    ("/devicecontrol/newDeviceRequests", {"id": "gw-777"}),
    ("/tenant/options", {"category": "remoteaccess", "key": "remoteaccess.operation.timeout", "value": "5"}),
], ids=["operation", "new-device-request", "tenant-option"])
def test_device_users_cannot_administer(shared, path, body):
    """A device, even one asking about itself, does not create operations, device requests or tenant options."""
    own = shared.device_id()
    body = {key: own if value == "{own}" else value for key, value in body.items()}
    assert_error(shared.api(DEVICE).post(path, json=body), 403)


# roles


@pytest.mark.parametrize("auth", [VIEWER, DEVICE], ids=["viewer", "device"])
def test_configuration_api_needs_remote_access_admin(cloud, auth):
    device_id = cloud.device_id()
    config_id = cloud.config_id(device_id)
    base = f"/service/remoteaccess/devices/{device_id}/configurations"
    api = cloud.api(auth)
    statuses = {"list": api.get(base).status_code,
                "create": api.post(base, json={"name": "rdp", "hostname": "10.0.0.9", "port": 3389}).status_code,
                "get": api.get(f"{base}/{config_id}").status_code,
                "update": api.put(f"{base}/{config_id}", json={"port": 2222}).status_code,
                "delete": api.delete(f"{base}/{config_id}").status_code}
    assert statuses == dict.fromkeys(statuses, 403)
    assert sorted((c["name"], c["port"]) for c in cloud.api(ADMIN).get(base).json()) == [("ssh", 22), ("vnc", 5900)]


@pytest.mark.parametrize("auth", [VIEWER, DEVICE], ids=["viewer", "device"])
def test_client_websocket_needs_remote_access_admin(cloud, auth):
    """A refused client must not leave behind an operation that would send the device somewhere."""
    assert client_status(cloud, auth=auth) == 403
    assert operations(cloud, ADMIN, deviceId=cloud.device_id()) == []


# tenant isolation


@DIRECTIONS
def test_a_tenants_objects_are_invisible_to_another_tenant(cloud, owner, intruder):
    owner_admin, _, serial = TENANTS[owner]
    intruder_admin, intruder_device, intruder_serial = TENANTS[intruder]
    device_id = cloud.device_id(serial, owner_admin)
    config_id = cloud.config_id(device_id, auth=owner_admin)
    op_id = create_operation(cloud, device_id, owner_admin)
    for auth in (intruder_admin, intruder_device):
        api = cloud.api(auth)
        assert_error(api.get(f"/identity/externalIds/c8y_Serial/{serial}"), 404, "identity/Not Found")
        assert_error(api.get(f"/inventory/managedObjects/{device_id}"), 404)
        assert_error(api.put(f"/inventory/managedObjects/{device_id}", json={"name": "taken"}), 404)
        assert_error(api.get(f"/devicecontrol/operations/{op_id}"), 404)
        assert_error(api.put(f"/devicecontrol/operations/{op_id}", json={"status": "EXECUTING"}), 404)
        assert op_id not in {op["id"] for op in operations(cloud, auth)}
        assert operations(cloud, auth, deviceId=device_id) == []
        listed = api.get("/inventory/managedObjects", params={"pageSize": 2000}).json()["managedObjects"]
        assert device_id not in {mo["id"] for mo in listed}
    own_device_id = cloud.device_id(intruder_serial, intruder_admin)
    admin = cloud.api(intruder_admin)
    for path in (f"/service/remoteaccess/devices/{device_id}/configurations",
                 f"/service/remoteaccess/devices/{device_id}/configurations/{config_id}",
                 f"/service/remoteaccess/devices/{own_device_id}/configurations/{config_id}"):
        assert_error(admin.get(path), 404)
    assert_error(admin.delete(f"/service/remoteaccess/devices/{device_id}/configurations/{config_id}"), 404)
    owners_view = cloud.api(owner_admin)
    assert owners_view.get(f"/inventory/managedObjects/{device_id}").json()["name"] == serial
    assert owners_view.get(f"/devicecontrol/operations/{op_id}").json()["status"] == "PENDING"
    assert cloud.config_id(device_id, auth=owner_admin) == config_id


@DIRECTIONS
def test_a_tunnel_cannot_be_opened_or_joined_from_another_tenant(cloud, owner, intruder):
    """A connection key is only good in its own tenant, and a refused join does not use it up."""
    owner_admin, owner_device, serial = TENANTS[owner]
    intruder_admin, intruder_device, intruder_serial = TENANTS[intruder]
    device_id = cloud.device_id(serial, owner_admin)
    config_id = cloud.config_id(device_id, auth=owner_admin)
    own_device_id = cloud.device_id(intruder_serial, intruder_admin)
    assert upgrade_status(lambda: cloud.open_client(device_id, config_id, auth=intruder_admin)) == 404
    assert upgrade_status(lambda: cloud.open_client(own_device_id, config_id, auth=intruder_admin)) == 404

    client = cloud.open_client(device_id, config_id, auth=owner_admin)
    key = cloud.pending_operation(device_id, auth=owner_device)["c8y_RemoteAccessConnect"]["connectionKey"]
    for auth in (intruder_device, intruder_admin):
        assert upgrade_status(lambda: cloud.open_device(key, auth=auth)) == 404
    device = cloud.open_device(key, auth=owner_device)
    client.send_binary(b"from the client")
    assert device.recv() == b"from the client"
    device.send_binary(b"from the device")
    assert client.recv() == b"from the device"
    client.close()
    device.close()


# secrets in the log


@pytest.mark.parametrize("args", [[], ["--verbose"]], ids=["default", "verbose"])
def test_secrets_never_appear_whole_in_the_log(make_cloud, args):
    """Logs get pasted into tickets: passwords and connection keys must not be in them, even with --verbose."""
    cloud = make_cloud(args=args)
    wrong_password = "wrong-" + secrets.token_hex(8)
    for user in ("t100/admin", "t100/nobody", "t999/admin", "admin", "management/devicebootstrap"):
        assert cloud.api((user, wrong_password)).get("/inventory/managedObjects").status_code == 401
    token_form = {**LOGIN_FORM, "password": wrong_password}
    assert cloud.api(None).post("/tenant/oauth/token", data=token_form).status_code == 401

    config_password = "cfg-" + secrets.token_hex(8)
    device_id = cloud.device_id()
    created = cloud.api(ADMIN).post(f"/service/remoteaccess/devices/{device_id}/configurations", json={
        "name": "vnc-with-password", "hostname": "10.0.0.5", "port": 5900, "protocol": "VNC",
        "credentialsType": "USER_PASS", "credentials": {"username": "operator", "password": config_password}})
    assert created.status_code == 201, created.text

    client, device, op = cloud.open_tunnel(device_id)
    key = op["c8y_RemoteAccessConnect"]["connectionKey"]
    client.send_binary(b"x")
    assert device.recv() == b"x"
    client.close()
    assert receive_close(device)[0] == 1000
    cloud.stop()

    log = cloud.log().lower()
    assert log, "the cloud wrote no log at all"
    for secret in (wrong_password, config_password, key[:5]):
        assert secret.lower() not in log
