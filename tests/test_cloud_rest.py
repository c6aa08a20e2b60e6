"""cra-cloud's REST endpoints, held to docs/wire.md by talking to a real cra-cloud process.

Auth forms, roles and tenant isolation are in test_cloud_auth.py, the WebSocket relay in
test_cloud_relay.py. Flows that change shared state get a fresh cloud (`cloud`); requests the
cloud must refuse all go to one module-wide cloud (`shared`), which the last test checks is
still whole.
"""
import re

import pytest
import requests

from toolkit.programs import ADMIN, BOOTSTRAP, DEVICE, Cloud

ERROR_MEDIA_TYPE = "application/vnd.com.nsn.cumulocity.error+json"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MIB = 1024 * 1024
TIMEOUT_OPTION = "/tenant/options/remoteaccess/remoteaccess.operation.timeout"
# the fragments an agent registers with (docs/wire.md section 2)
AGENT_FRAGMENTS = {"type": "c8y_Linux", "c8y_IsDevice": {}, "com_cumulocity_model_Agent": {},
                   "c8y_SupportedOperations": ["c8y_RemoteAccessConnect"],
                   "c8y_RemoteAccessSupportedProtocols": ["PASSTHROUGH", "SSH", "VNC", "TELNET"]}
CONNECT = {"c8y_RemoteAccessConnect": {"hostname": "10.0.0.67", "port": 5900,
                                       "connectionKey": "eb5e9d13-1caa-486b-bdda-130ca0d87df8"}}


def error_of(response, status, error=None, mention=None):
    """The body of an error answer, after checking it is the platform's error shape (docs/wire.md section 1)."""
    where = f"{response.request.method} {response.request.path_url[:80]}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers["Content-Type"].startswith(ERROR_MEDIA_TYPE), f"{where}: {response.headers['Content-Type']}"
    body = response.json()
    assert all(isinstance(body.get(k), str) and body[k] for k in ("error", "message", "info")), f"{where}: {body}"
    if error:
        assert body["error"] == error, f"{where}: {body}"
    if mention:
        assert mention in body["message"], f"{where}: {body}"
    return body


def ok(response, status=200):
    assert response.status_code == status, f"{response.request.method} {response.request.path_url}: {response.text[:300]}"
    return response.json() if response.content else None


def call(api, method, path, **kwargs):
    return getattr(api, method.lower())(path, **kwargs)


def follow(api, cloud, link):
    """GET a self/next/prev link, which is absolute, through the relative-path session."""
    assert link.startswith(cloud.url + "/"), link
    return ok(api.get(link[len(cloud.url):]))


def walk(api, cloud, path, key, page_size):
    """Every page from the first by next links, as a client pages; bounded, stops at an empty or last page."""
    pages = [ok(api.get(path, params={"pageSize": page_size}))]
    for _ in range(20):
        if not pages[-1][key] or "next" not in pages[-1]:
            break
        pages.append(follow(api, cloud, pages[-1]["next"]))
    return [p for p in pages if p[key]]


def register(api, serial):
    """docs/wire.md section 2 as an agent does it the first time: look up, create, link. The created object."""
    error_of(api.get(f"/identity/externalIds/c8y_Serial/{serial}"), 404, "identity/Not Found")
    created = api.post("/inventory/managedObjects", json={"name": serial, **AGENT_FRAGMENTS})
    mo = ok(created, 201)
    assert "managedobject+json" in created.headers["Content-Type"].lower()
    assert {k: mo.get(k) for k in AGENT_FRAGMENTS} == AGENT_FRAGMENTS and mo["name"] == serial
    assert mo["id"].isdigit() and mo["self"].endswith(f"/inventory/managedObjects/{mo['id']}")
    assert mo["owner"] and TIMESTAMP.match(mo["lastUpdated"])
    ok(api.post(f"/identity/globalIds/{mo['id']}/externalIds", json={"type": "c8y_Serial", "externalId": serial}), 201)
    assert ok(api.get(f"/identity/externalIds/c8y_Serial/{serial}"))["managedObject"]["id"] == mo["id"]
    return mo


def new_device(api, name):
    return ok(api.post("/inventory/managedObjects", json={"name": name, "c8y_IsDevice": {}}), 201)["id"]


def new_operation(api, device_id, fragments=CONNECT):
    return ok(api.post("/devicecontrol/operations", json={"deviceId": device_id, **fragments}), 201)


def operation_in(api, device_id, path):
    """A fresh operation walked through the given statuses (each a legal move)."""
    op = new_operation(api, device_id)
    for status in path:
        body = {"status": status, **({"failureReason": "tunnel broke"} if status == "FAILED" else {})}
        op = ok(api.put(f"/devicecontrol/operations/{op['id']}", json=body))
    return op


def assert_mirrored(api, device_id):
    """The device's c8y_RemoteAccessList is what the configurations endpoint lists (docs/wire.md section 5)."""
    configs = ok(api.get(f"/service/remoteaccess/devices/{device_id}/configurations"))
    mirror = ok(api.get(f"/inventory/managedObjects/{device_id}"))["c8y_RemoteAccessList"]
    assert mirror == [{k: v for k, v in c.items() if k != "self"} for c in configs]
    return configs


# identity


def test_external_id_lookup_has_the_wire_shape(cloud):
    api = cloud.api(DEVICE)
    found = api.get("/identity/externalIds/c8y_Serial/gw-001")
    body = ok(found)
    mo_id = body["managedObject"]["id"]
    assert body == {"externalId": "gw-001", "type": "c8y_Serial", "self": f"{cloud.url}/identity/externalIds/c8y_Serial/gw-001",
                    "managedObject": {"id": mo_id, "self": f"{cloud.url}/inventory/managedObjects/{mo_id}"}}
    assert ok(api.get(f"/inventory/managedObjects/{mo_id}"))["name"] == "gw-001"


def test_unknown_external_id_is_identity_not_found(cloud):
    body = error_of(cloud.api(DEVICE).get("/identity/externalIds/c8y_Serial/gw-404"), 404, "identity/Not Found")
    assert body["message"] == "External id not found; external id = ID [type=c8y_Serial, value=gw-404]"


def test_external_ids_are_added_listed_and_never_taken_twice(cloud):
    api = cloud.api(ADMIN)
    gw1, gw2 = cloud.device_id("gw-001"), cloud.device_id("gw-002")
    alias = {"type": "c8y_Serial", "externalId": "gw-001-alias"}
    added = ok(api.post(f"/identity/globalIds/{gw1}/externalIds", json=alias), 201)
    assert added["externalId"] == "gw-001-alias" and added["managedObject"]["id"] == gw1
    assert ok(api.get("/identity/externalIds/c8y_Serial/gw-001-alias"))["managedObject"]["id"] == gw1
    error_of(api.post(f"/identity/globalIds/{gw1}/externalIds", json=alias), 409, "identity/Conflict")
    error_of(api.post(f"/identity/globalIds/{gw2}/externalIds", json=alias), 409, "identity/Conflict")
    listed = ok(api.get(f"/identity/globalIds/{gw1}/externalIds"))["externalIds"]
    assert sorted(e["externalId"] for e in listed) == ["gw-001", "gw-001-alias"]
    assert ok(api.get("/identity/externalIds/c8y_Serial/gw-001-alias"))["managedObject"]["id"] == gw1


# inventory


def test_a_device_registers_itself_as_wire_section_2_says(cloud):
    api = cloud.api(DEVICE)
    mo = register(api, "gw-003")
    assert mo["owner"] == "device_gw-001"
    assert ok(api.get(f"/inventory/managedObjects/{mo['id']}")) == mo


def test_put_replaces_given_fragments_removes_nulls_and_keeps_the_rest(cloud):
    """Agents send only what changed (docs/wire.md section 2, step 3): the rest must survive, and id/owner are not theirs to set."""
    api = cloud.api(DEVICE)
    mo_id = cloud.device_id()
    before = ok(api.put(f"/inventory/managedObjects/{mo_id}", json=AGENT_FRAGMENTS))
    change = {"c8y_SupportedOperations": ["c8y_RemoteAccessConnect", "c8y_Restart"], "c8y_IsDevice": None,
              "id": "1", "owner": "someone-else"}
    after = ok(api.put(f"/inventory/managedObjects/{mo_id}", json=change))
    assert after["c8y_SupportedOperations"] == ["c8y_RemoteAccessConnect", "c8y_Restart"]
    assert "c8y_IsDevice" not in after
    assert {k: after[k] for k in ("id", "owner", "name", "type", "com_cumulocity_model_Agent", "c8y_RemoteAccessList")} == \
           {k: before[k] for k in ("id", "owner", "name", "type", "com_cumulocity_model_Agent", "c8y_RemoteAccessList")}
    assert after["lastUpdated"] >= before["lastUpdated"]
    assert ok(api.get(f"/inventory/managedObjects/{mo_id}")) == after


def test_inventory_pages_through_every_object_once_in_id_order(cloud):
    api = cloud.api(ADMIN)
    made = [new_device(api, f"extra-{n}") for n in range(4)]
    first = ok(api.get("/inventory/managedObjects", params={"pageSize": 4, "withTotalPages": "true"}))
    assert first["statistics"] == {"currentPage": 1, "pageSize": 4, "totalPages": 2} and "prev" not in first
    pages = walk(api, cloud, "/inventory/managedObjects", "managedObjects", 4)
    assert [len(p["managedObjects"]) for p in pages] == [4, 2]
    assert pages[1]["statistics"]["currentPage"] == 2 and "prev" in pages[1]
    assert follow(api, cloud, pages[1]["prev"])["managedObjects"] == pages[0]["managedObjects"]
    ids = [int(mo["id"]) for p in pages for mo in p["managedObjects"]]
    assert ids == sorted(set(ids)) and {str(i) for i in ids} >= set(made) and len(ids) == 6


def test_admin_deletes_a_device_with_its_identity_and_operations(cloud):
    """Nothing may dangle: a re-registering agent must find its serial free, not pointing at a dead object."""
    api = cloud.api(ADMIN)
    gw2 = cloud.device_id("gw-002")
    op = new_operation(api, gw2)
    assert api.delete(f"/inventory/managedObjects/{gw2}").status_code == 204
    error_of(api.get(f"/inventory/managedObjects/{gw2}"), 404, "inventory/Not Found")
    error_of(api.get("/identity/externalIds/c8y_Serial/gw-002"), 404, "identity/Not Found")
    error_of(api.get(f"/devicecontrol/operations/{op['id']}"), 404, "devicecontrol/Not Found")
    assert [mo["name"] for mo in ok(api.get("/inventory/managedObjects"))["managedObjects"]] == ["gw-001"]


# the module-wide cloud: operations that do not need a clean tenant, and everything refused


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cloud for tests that make their own objects or are refused; `ids` names what the seed made."""
    instance = Cloud(tmp_path_factory.mktemp("shared")).start()
    api = instance.api(ADMIN)
    gw1, gw2 = instance.device_id("gw-001"), instance.device_id("gw-002")
    ok(api.post("/tenant/options", json={"category": "remoteaccess", "key": "remoteaccess.operation.timeout", "value": "30"}), 201)
    ok(api.post("/devicecontrol/newDeviceRequests", json={"id": "gw-waiting"}), 201)
    instance.ids = {"gw1": gw1, "gw2": gw2, "ssh": instance.config_id(gw1, "ssh"), "vnc": instance.config_id(gw1, "vnc"),
                    "op": new_operation(api, gw1)["id"]}
    instance.snapshot = snapshot(instance)
    yield instance
    instance.stop()


def snapshot(cloud):
    """What no refused request may change."""
    api = cloud.api(ADMIN)
    paths = ("/inventory/managedObjects/{gw1}", "/inventory/managedObjects/{gw2}", "/identity/globalIds/{gw1}/externalIds",
             "/service/remoteaccess/devices/{gw1}/configurations", "/devicecontrol/operations/{op}",
             TIMEOUT_OPTION, "/devicecontrol/newDeviceRequests/gw-waiting")
    return [ok(api.get(path.format(**cloud.ids))) for path in paths]


@pytest.fixture(scope="module")
def traffic(shared):
    """Two devices of their own with operations A (connect, PENDING), B (restart, EXECUTING) on the first, C on the second."""
    api = shared.api(ADMIN)
    d1, d2 = new_device(api, "traffic-1"), new_device(api, "traffic-2")
    ops = {"A": new_operation(api, d1), "B": new_operation(api, d1, {"c8y_Restart": {}}), "C": new_operation(api, d2)}
    ok(api.put(f"/devicecontrol/operations/{ops['B']['id']}", json={"status": "EXECUTING"}))
    return {"d1": d1, "d2": d2, "names": {op["id"]: name for name, op in ops.items()}}


# operations


def test_admin_creates_a_pending_operation_with_the_wire_shape(shared):
    api, gw1 = shared.api(ADMIN), shared.ids["gw1"]
    sent = {"deviceId": gw1, "description": "Connect to remote access server", "status": "SUCCESSFUL", "id": "1", **CONNECT}
    created = ok(api.post("/devicecontrol/operations", json=sent), 201)
    assert created["status"] == "PENDING" and created["deviceId"] == gw1 and created["id"] not in ("1", gw1)
    assert created["self"] == f"{shared.url}/devicecontrol/operations/{created['id']}"
    assert TIMESTAMP.match(created["creationTime"])
    assert created["description"] == sent["description"] and created["c8y_RemoteAccessConnect"] == CONNECT["c8y_RemoteAccessConnect"]
    assert ok(shared.api(DEVICE).get(f"/devicecontrol/operations/{created['id']}")) == created


@pytest.mark.parametrize("query, expected", [
    ({"deviceId": "{d1}"}, "AB"),
    ({"deviceId": "{d1}", "status": "PENDING"}, "A"),
    ({"deviceId": "{d1}", "status": "EXECUTING"}, "B"),
    ({"deviceId": "{d2}", "status": "EXECUTING"}, ""),
    ({"deviceId": "{d1}", "fragmentType": "c8y_Restart"}, "B"),
    ({"deviceId": "{d2}", "fragmentType": "c8y_RemoteAccessConnect"}, "C"),
    ({"deviceId": "{d1}", "revert": "true"}, "BA"),
    ({"deviceId": "{d1}", "pageSize": "1", "currentPage": "2"}, "B"),
    ({"deviceId": "999999"}, ""),
    ({"deviceId": "abc"}, ""),
    ({"deviceId": "\u00b2"}, ""),
], ids=lambda v: "&".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else v or "none")
def test_operation_list_filters_and_orders(shared, traffic, query, expected):
    params = {k: v.format(**traffic) for k, v in query.items()}
    body = ok(shared.api(ADMIN).get("/devicecontrol/operations", params=params))
    assert "".join(traffic["names"].get(op["id"], "?") for op in body["operations"]) == expected
    assert body["statistics"]["pageSize"] == int(params.get("pageSize", 5))


def test_operations_page_ascending_by_id_with_links(cloud):
    """An agent pages through its PENDING/EXECUTING operations by next links: none may be skipped or seen twice."""
    api = cloud.api(ADMIN)
    device = new_device(api, "busy")
    made = [new_operation(api, device)["id"] for _ in range(5)]
    pages = walk(api, cloud, f"/devicecontrol/operations?deviceId={device}&status=PENDING", "operations", 2)
    assert [[op["id"] for op in p["operations"]] for p in pages] == [made[0:2], made[2:4], made[4:]]
    assert [p["statistics"] for p in pages] == [{"currentPage": n, "pageSize": 2} for n in (1, 2, 3)]
    assert "prev" not in pages[0] and all("prev" in p for p in pages[1:])
    assert [op["id"] for op in follow(api, cloud, pages[2]["prev"])["operations"]] == made[2:4]


@pytest.mark.parametrize("path", [["EXECUTING", "SUCCESSFUL"], ["EXECUTING", "FAILED"], ["FAILED"]], ids="->".join)
def test_legal_status_moves(shared, path):
    api = shared.api(DEVICE)
    op = operation_in(shared.api(ADMIN), shared.ids["gw1"], path)
    stored = ok(api.get(f"/devicecontrol/operations/{op['id']}"))
    assert stored["status"] == path[-1] and stored == op
    assert stored.get("failureReason") == ("tunnel broke" if path[-1] == "FAILED" else None)
    assert stored["c8y_RemoteAccessConnect"] == CONNECT["c8y_RemoteAccessConnect"]


@pytest.mark.parametrize("path, body, mention", [
    ([], {"status": "SUCCESSFUL"}, "PENDING to SUCCESSFUL"),
    (["EXECUTING"], {"status": "PENDING"}, "EXECUTING to PENDING"),
    (["EXECUTING", "SUCCESSFUL"], {"status": "EXECUTING"}, "SUCCESSFUL to EXECUTING"),
    (["EXECUTING", "SUCCESSFUL"], {"status": "FAILED", "failureReason": "late"}, "SUCCESSFUL to FAILED"),
    (["FAILED"], {"status": "EXECUTING"}, "FAILED to EXECUTING"),
    ([], {"status": "EXECUTING", "failureReason": "why"}, "failureReason"),
    (["EXECUTING"], {"status": "SUCCESSFUL", "failureReason": "why"}, "failureReason"),
    ([], {"failureReason": "why"}, "failureReason"),
    (["EXECUTING"], {"status": "FAILED", "failureReason": 42}, "failureReason"),
    ([], {"status": "DONE"}, "'DONE'"),
    ([], {"status": 5}, "5"),
    ([], {"status": None}, "None"),
], ids=lambda v: "->".join(["PENDING", *v]) if isinstance(v, list) else "&".join(f"{k}={x}" for k, x in v.items())
    if isinstance(v, dict) else v)
def test_illegal_status_changes_are_refused_and_change_nothing(shared, path, body, mention):
    """An operation's history is what a user reads to learn what happened: a refused change must leave no trace."""
    admin = shared.api(ADMIN)
    op = operation_in(admin, shared.ids["gw1"], path)
    error_of(shared.api(DEVICE).put(f"/devicecontrol/operations/{op['id']}", json=body), 422,
             "devicecontrol/Unprocessable Entity", mention)
    assert ok(admin.get(f"/devicecontrol/operations/{op['id']}")) == op


# device credentials (bootstrap)


def test_device_gets_credentials_once_accepted_and_they_work(cloud):
    admin, boot = cloud.api(ADMIN), cloud.api(BOOTSTRAP)
    request = ok(admin.post("/devicecontrol/newDeviceRequests", json={"id": "gw-new"}), 201)
    assert request["id"] == "gw-new" and request["status"] == "WAITING_FOR_CONNECTION"
    for _ in range(2):  # asking again before acceptance changes nothing
        error_of(boot.post("/devicecontrol/deviceCredentials", json={"id": "gw-new"}), 404, "devicecontrol/Not Found")
        assert ok(admin.get("/devicecontrol/newDeviceRequests/gw-new"))["status"] == "PENDING_ACCEPTANCE"
    listed = ok(admin.get("/devicecontrol/newDeviceRequests"))["newDeviceRequests"]
    assert [(r["id"], r["status"]) for r in listed] == [("gw-new", "PENDING_ACCEPTANCE")]
    assert ok(admin.put("/devicecontrol/newDeviceRequests/gw-new", json={"status": "ACCEPTED"}))["status"] == "ACCEPTED"
    answer = boot.post("/devicecontrol/deviceCredentials", json={"id": "gw-new"})
    creds = ok(answer, 201)
    assert "devicecredentials+json" in answer.headers["Content-Type"].lower()
    assert set(creds) == {"id", "self", "tenantId", "username", "password"}
    assert creds["id"] == "gw-new" and creds["tenantId"] == "t100" and creds["password"]
    device = cloud.api((f"{creds['tenantId']}/{creds['username']}", creds["password"]))
    assert register(device, "gw-new")["owner"] == creds["username"]


def test_a_request_is_accepted_only_after_the_device_asked(cloud):
    admin = cloud.api(ADMIN)
    ok(admin.post("/devicecontrol/newDeviceRequests", json={"id": "gw-new"}), 201)
    error_of(admin.put("/devicecontrol/newDeviceRequests/gw-new", json={"status": "ACCEPTED"}), 422,
             "devicecontrol/Unprocessable Entity", "WAITING_FOR_CONNECTION")
    assert ok(admin.get("/devicecontrol/newDeviceRequests/gw-new"))["status"] == "WAITING_FOR_CONNECTION"
    error_of(cloud.api(BOOTSTRAP).post("/devicecontrol/deviceCredentials", json={"id": "gw-new"}), 404)
    error_of(admin.put("/devicecontrol/newDeviceRequests/gw-new", json={"status": "REJECTED"}), 422,
             "devicecontrol/Unprocessable Entity", "ACCEPTED")
    assert ok(admin.get("/devicecontrol/newDeviceRequests/gw-new"))["status"] == "PENDING_ACCEPTANCE"


def test_device_requests_are_unique_and_deletable(cloud):
    admin = cloud.api(ADMIN)
    ok(admin.post("/devicecontrol/newDeviceRequests", json={"id": "gw-new"}), 201)
    error_of(admin.post("/devicecontrol/newDeviceRequests", json={"id": "gw-new"}), 409, "devicecontrol/Conflict")
    assert admin.delete("/devicecontrol/newDeviceRequests/gw-new").status_code == 204
    error_of(admin.get("/devicecontrol/newDeviceRequests/gw-new"), 404, "devicecontrol/Not Found")
    error_of(admin.delete("/devicecontrol/newDeviceRequests/gw-new"), 404, "devicecontrol/Not Found")
    error_of(cloud.api(BOOTSTRAP).post("/devicecontrol/deviceCredentials", json={"id": "gw-new"}), 404)
    error_of(admin.get("/devicecontrol/newDeviceRequests/gw-new"), 404)


# remote access configurations


def test_configuration_lifecycle_is_mirrored_in_the_managed_object(cloud):
    api = cloud.api(ADMIN)
    gw1 = cloud.device_id()
    base = f"/service/remoteaccess/devices/{gw1}/configurations"
    seeded = assert_mirrored(api, gw1)
    assert [(c["name"], c["hostname"], c["port"], c["protocol"]) for c in seeded] == \
           [("ssh", "127.0.0.1", 22, "PASSTHROUGH"), ("vnc", "10.0.0.67", 5900, "VNC")]
    sent = {"name": "telnet", "hostname": "10.0.0.5", "port": 23, "protocol": "TELNET"}
    created = ok(api.post(base, json=sent), 201)
    assert {k: created[k] for k in sent} == sent and created["self"] == f"{cloud.url}{base}/{created['id']}"
    assert ok(api.get(f"{base}/{created['id']}")) == created
    assert [c["name"] for c in assert_mirrored(api, gw1)] == ["ssh", "vnc", "telnet"]
    changed = ok(api.put(f"{base}/{created['id']}", json={"port": 2323}))
    assert changed == {**created, "port": 2323}
    assert assert_mirrored(api, gw1)[2] == changed
    assert api.delete(f"{base}/{created['id']}").status_code == 204
    error_of(api.get(f"{base}/{created['id']}"), 404, "remoteaccess/Not Found")
    assert assert_mirrored(api, gw1) == seeded


def test_a_configuration_password_never_comes_back(cloud):
    """Configurations and their mirror are readable by every user and device of the tenant; the secret is not."""
    api = cloud.api(ADMIN)
    gw1 = cloud.device_id()
    base = f"/service/remoteaccess/devices/{gw1}/configurations"
    sent = {"name": "login", "hostname": "127.0.0.1", "port": 22, "protocol": "SSH", "credentialsType": "USER_PASS",
            "credentials": {"username": "u", "password": "s3cret"}}
    created = api.post(base, json=sent)
    url = f"{base}/{ok(created, 201)['id']}"
    answers = [created, api.get(base), api.get(url), api.put(url, json={"name": "login-2"}),
               api.put(url, json={"credentials": {"password": "n3w-s3cret"}}), api.get(url),
               api.get(f"/inventory/managedObjects/{gw1}"), api.get("/inventory/managedObjects"),
               cloud.api(DEVICE).get(f"/inventory/managedObjects/{gw1}")]
    for answer in answers:
        assert answer.status_code in (200, 201) and "s3cret" not in answer.text, answer.request.url
    assert ok(api.get(url))["credentials"] == {"username": "u"}
    assert [c for c in assert_mirrored(api, gw1) if c["name"] == "login-2"][0]["credentials"] == {"username": "u"}
    assert "s3cret" not in cloud.log()


# tenant options


def test_operation_timeout_option_lifecycle(cloud):
    api = cloud.api(ADMIN)
    sent = {"category": "remoteaccess", "key": "remoteaccess.operation.timeout", "value": "45"}
    created = ok(api.post("/tenant/options", json=sent), 201)
    assert created == {**sent, "self": cloud.url + TIMEOUT_OPTION}
    assert ok(api.get(TIMEOUT_OPTION)) == created
    assert ok(api.put(TIMEOUT_OPTION, json={"value": 60}))["value"] == "60"
    assert ok(api.get(TIMEOUT_OPTION))["value"] == "60"
    assert api.delete(TIMEOUT_OPTION).status_code == 204
    error_of(api.get(TIMEOUT_OPTION), 404, "options/Not Found")
    error_of(api.delete(TIMEOUT_OPTION), 404, "options/Not Found")


# health


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_health_answers_without_auth(shared, method):
    assert requests.request(method, shared.url + "/service/remoteaccess/health", timeout=10).status_code == 200


# everything refused, on the shared cloud


def refused(label, method, path, body=None, status=422, error=None, mention=None, auth=ADMIN, **extra):
    return pytest.param(auth, method, path, body, status, error, mention, extra, id=label)


CONFIGS = "/service/remoteaccess/devices/{gw1}/configurations"
GOOD_CONFIG = {"name": "new", "hostname": "10.0.0.9", "port": 22, "protocol": "SSH"}
REFUSED = [
    # unknown ids and paths
    refused("mo 999999", "GET", "/inventory/managedObjects/999999", status=404, error="inventory/Not Found", mention="999999"),
    refused("mo abc", "GET", "/inventory/managedObjects/abc", status=404, error="inventory/Not Found"),
    refused("mo -1", "GET", "/inventory/managedObjects/-1", status=404, error="inventory/Not Found"),
    refused("mo 20 digits", "GET", "/inventory/managedObjects/99999999999999999999", status=404, error="inventory/Not Found"),
    refused("mo superscript two", "GET", "/inventory/managedObjects/\u00b2", status=404, error="inventory/Not Found"),
    refused("put mo 999999", "PUT", "/inventory/managedObjects/999999", {"name": "x"}, 404, "inventory/Not Found"),
    refused("delete mo 999999", "DELETE", "/inventory/managedObjects/999999", status=404, error="inventory/Not Found"),
    refused("external ids of 999999", "GET", "/identity/globalIds/999999/externalIds", status=404, error="inventory/Not Found"),
    refused("external id on abc", "POST", "/identity/globalIds/abc/externalIds", {"type": "c8y_Serial", "externalId": "x"}, 404),
    refused("operation 999999", "GET", "/devicecontrol/operations/999999", status=404, error="devicecontrol/Not Found"),
    refused("a device id is no operation", "GET", "/devicecontrol/operations/{gw1}", status=404, error="devicecontrol/Not Found"),
    refused("put operation 999999", "PUT", "/devicecontrol/operations/999999", {"status": "EXECUTING"}, 404, "devicecontrol/Not Found"),
    refused("configs of 999999", "GET", "/service/remoteaccess/devices/999999/configurations", status=404, error="inventory/Not Found"),
    refused("config 999999", "GET", CONFIGS + "/999999", status=404, error="remoteaccess/Not Found"),
    refused("config of another device", "GET", "/service/remoteaccess/devices/{gw2}/configurations/{ssh}", status=404,
            error="remoteaccess/Not Found"),
    refused("put config 999999", "PUT", CONFIGS + "/999999", {"port": 23}, 404, "remoteaccess/Not Found"),
    refused("delete config 999999", "DELETE", CONFIGS + "/999999", status=404, error="remoteaccess/Not Found"),
    refused("option unknown", "GET", "/tenant/options/remoteaccess/nope", status=404, error="options/Not Found"),
    refused("put option unknown", "PUT", "/tenant/options/remoteaccess/nope", {"value": "1"}, 404, "options/Not Found"),
    refused("device request unknown", "GET", "/devicecontrol/newDeviceRequests/nope", status=404, error="devicecontrol/Not Found"),
    refused("no such path", "GET", "/no/such/path", status=404, error="general/Not Found"),
    refused("no such method", "PATCH", "/inventory/managedObjects/{gw1}", {}, 405, "general/Method Not Allowed"),
    # paging and filters
    refused("pageSize 0", "GET", "/devicecontrol/operations", params={"pageSize": "0"}, mention="pageSize"),
    refused("pageSize abc", "GET", "/inventory/managedObjects", params={"pageSize": "abc"}, mention="pageSize"),
    refused("pageSize superscript two", "GET", "/inventory/managedObjects", params={"pageSize": "\u00b2"}, mention="pageSize"),
    refused("currentPage -1", "GET", "/devicecontrol/operations", params={"currentPage": "-1"}, mention="currentPage"),
    refused("status filter unknown", "GET", "/devicecontrol/operations", params={"status": "DONE"}, mention="DONE"),
    # wrong types and unknown references
    refused("mo name a number", "POST", "/inventory/managedObjects", {"name": 5}, error="inventory/Unprocessable Entity", mention="name"),
    refused("mo type a list", "PUT", "/inventory/managedObjects/{gw1}", {"type": ["x"]}, mention="type"),
    refused("supported operations a string", "PUT", "/inventory/managedObjects/{gw1}", {"c8y_SupportedOperations": "c8y_Restart"},
            mention="c8y_SupportedOperations"),
    refused("external id a number", "POST", "/identity/globalIds/{gw1}/externalIds", {"type": "c8y_Serial", "externalId": 7},
            error="identity/Unprocessable Entity", mention="externalId"),
    refused("external id without type", "POST", "/identity/globalIds/{gw1}/externalIds", {"externalId": "x"}, mention="type"),
    refused("operation without device", "POST", "/devicecontrol/operations", CONNECT, mention="deviceId"),
    refused("operation device a list", "POST", "/devicecontrol/operations", {"deviceId": ["1"]}, mention="deviceId"),
    refused("operation device true", "POST", "/devicecontrol/operations", {"deviceId": True}, mention="deviceId"),
    refused("operation device unknown", "POST", "/devicecontrol/operations", {"deviceId": "999999"}, mention="999999"),
    refused("operation device 20 digits", "POST", "/devicecontrol/operations", {"deviceId": "99999999999999999999"},
            error="devicecontrol/Unprocessable Entity"),
    refused("device request id a number", "POST", "/devicecontrol/newDeviceRequests", {"id": 5}, mention="id"),
    refused("credentials id missing", "POST", "/devicecontrol/deviceCredentials", {}, mention="id", auth=BOOTSTRAP),
    refused("option key a number", "POST", "/tenant/options", {"category": "x", "key": 5, "value": "1"},
            error="options/Unprocessable Entity", mention="key"),
    refused("option value an object", "POST", "/tenant/options", {"category": "x", "key": "y", "value": {}}, mention="value"),
    # configurations: 422 naming the field
    refused("config port 0", "POST", CONFIGS, {**GOOD_CONFIG, "port": 0}, error="remoteaccess/Unprocessable Entity", mention="port"),
    refused("config port 65536", "POST", CONFIGS, {**GOOD_CONFIG, "port": 65536}, mention="port"),
    refused("config port a string", "POST", CONFIGS, {**GOOD_CONFIG, "port": "22"}, mention="port"),
    refused("config port true", "POST", CONFIGS, {**GOOD_CONFIG, "port": True}, mention="port"),
    refused("config protocol FTP", "POST", CONFIGS, {**GOOD_CONFIG, "protocol": "FTP"}, mention="protocol"),
    refused("config without name", "POST", CONFIGS, {k: v for k, v in GOOD_CONFIG.items() if k != "name"}, mention="name"),
    refused("config blank hostname", "POST", CONFIGS, {**GOOD_CONFIG, "hostname": " "}, mention="hostname"),
    refused("config credentialsType", "POST", CONFIGS, {**GOOD_CONFIG, "credentialsType": "PLAIN"}, mention="credentialsType"),
    refused("config credentials a string", "POST", CONFIGS, {**GOOD_CONFIG, "credentials": "pw"}, mention="credentials"),
    refused("config password a number", "POST", CONFIGS, {**GOOD_CONFIG, "credentials": {"password": 5}}, mention="password"),
    refused("config put port 0", "PUT", CONFIGS + "/{ssh}", {"port": 0}, mention="port"),
    refused("config put name null", "PUT", CONFIGS + "/{ssh}", {"name": None}, mention="name"),
    # the operation timeout option must be a positive number of seconds
    *[refused(f"timeout {method} {value!r}", method, path, {**extra, "value": value}, error="options/Unprocessable Entity",
              mention="value" if value is None or value is True else "remoteaccess.operation.timeout")
      for value in ("abc", "-5", -5, 0, "0", "NaN", "inf", "", True, None)
      for method, path, extra in (("POST", "/tenant/options", {"category": "remoteaccess", "key": "remoteaccess.operation.timeout"}),
                                  ("PUT", TIMEOUT_OPTION, {}))],
]


@pytest.mark.parametrize("auth, method, path, body, status, error, mention, extra", REFUSED)
def test_refused_requests_say_why(shared, auth, method, path, body, status, error, mention, extra):
    kwargs = dict(extra, **({"json": body} if body is not None else {}))
    error_of(call(shared.api(auth), method, path.format(**shared.ids), **kwargs), status, error, mention)


BODY_ENDPOINTS = [(ADMIN, "POST", "/inventory/managedObjects"), (ADMIN, "PUT", "/inventory/managedObjects/{gw1}"),
                  (ADMIN, "POST", "/identity/globalIds/{gw1}/externalIds"), (ADMIN, "POST", "/devicecontrol/operations"),
                  (DEVICE, "PUT", "/devicecontrol/operations/{op}"), (ADMIN, "POST", "/devicecontrol/newDeviceRequests"),
                  (ADMIN, "PUT", "/devicecontrol/newDeviceRequests/gw-waiting"),
                  (BOOTSTRAP, "POST", "/devicecontrol/deviceCredentials"), (ADMIN, "POST", CONFIGS),
                  (ADMIN, "PUT", CONFIGS + "/{ssh}"), (ADMIN, "POST", "/tenant/options"), (ADMIN, "PUT", TIMEOUT_OPTION)]


@pytest.mark.parametrize("raw", [
    pytest.param(b'{"name": "x",', id="truncated"),
    pytest.param(b"{name: 'x'}", id="not-json"),
    pytest.param(b'[{"name": "x"}]', id="array"),
    pytest.param(b'"x"', id="string"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"name": "\xff"}', id="not-utf8"),
    pytest.param(b'{"a":' * 50000 + b"1" + b"}" * 50000, id="nested-50000-deep"),
])
def test_a_body_that_is_no_json_object_is_400_everywhere(shared, raw):
    for auth, method, path in BODY_ENDPOINTS:
        answer = call(shared.api(auth), method, path.format(**shared.ids), data=raw, headers={"Content-Type": "application/json"})
        error_of(answer, 400, "general/Bad Request")


def test_non_standard_json_numbers_are_400(cloud):
    """NaN is not JSON (RFC 8259): taking it would store an object that no strict client can read back."""
    answer = cloud.api(DEVICE).post("/inventory/managedObjects", data=b'{"name": "x", "c8y_Temperature": NaN}',
                                    headers={"Content-Type": "application/json"})
    error_of(answer, 400, "general/Bad Request")


@pytest.mark.parametrize("auth, method, path", [(ADMIN, "POST", "/inventory/managedObjects"),
                                                (DEVICE, "PUT", "/devicecontrol/operations/{op}"),
                                                (ADMIN, "POST", CONFIGS)])
def test_a_body_over_1_mib_is_413(shared, auth, method, path):
    """The cloud reads bodies into memory: the limit is what keeps one client from exhausting it."""
    body = {"name": "big", "hostname": "h", "port": 22, "c8y_Blob": "x" * MIB}
    answer = call(shared.api(auth), method, path.format(**shared.ids), json=body)
    error_of(answer, 413)


def test_the_shared_cloud_is_whole_after_everything_it_refused(shared):
    """Runs last: nothing refused above may have crashed the cloud or changed what it had."""
    assert shared.proc.poll() is None
    assert snapshot(shared) == shared.snapshot
    assert ok(shared.api(DEVICE).get("/identity/externalIds/c8y_Serial/gw-001"))["managedObject"]["id"] == shared.ids["gw1"]
    assert requests.head(shared.url + "/service/remoteaccess/health", timeout=10).status_code == 200
