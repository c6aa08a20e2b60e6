"""cra-cloud as a program: what survives a restart, the seed, secrets at rest, and its command line."""
import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from toolkit.programs import ADMIN, DEVICE, SEED, Cloud, basic
from toolkit.waiting import wait_until

SALT = "8f3a2c11d0e94b7a"


def cra_cloud(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "cra.cloud", *args], capture_output=True, text=True, timeout=timeout)


def test_state_survives_a_restart(cloud):
    """Devices, operations, options and users created over the API are all there after a restart."""
    api = cloud.api(ADMIN)
    device_id = cloud.device_id()
    op = api.post("/devicecontrol/operations", json={"deviceId": device_id, "c8y_Restart": {}}).json()
    api.post("/tenant/options", json={"category": "remoteaccess", "key": "remoteaccess.operation.timeout", "value": "35"})
    created = api.post("/inventory/managedObjects", json={"name": "extra", "c8y_IsDevice": {}}).json()

    cloud.restart()

    api = cloud.api(ADMIN)
    assert api.get(f"/devicecontrol/operations/{op['id']}").json()["status"] == "PENDING"
    assert api.get("/tenant/options/remoteaccess/remoteaccess.operation.timeout").json()["value"] == "35"
    assert api.get(f"/inventory/managedObjects/{created['id']}").json()["name"] == "extra"
    assert cloud.api(DEVICE).get(f"/devicecontrol/operations/{op['id']}").status_code == 200


def test_a_token_survives_a_restart(cloud):
    token = cloud.api().post("/tenant/oauth/token", data={"grant_type": "PASSWORD", "username": ADMIN[0],
                                                           "password": ADMIN[1]}).json()["access_token"]
    cloud.restart()
    response = cloud.api(None).get("/inventory/managedObjects", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_memory_database_forgets_at_exit(tmp_path):
    cloud = Cloud(tmp_path, db=":memory:").start()
    try:
        cloud.api().post("/inventory/managedObjects", json={"name": "ephemeral"})
        cloud.restart()
        names = [mo.get("name") for mo in cloud.api().get("/inventory/managedObjects?pageSize=100").json()["managedObjects"]]
        assert "ephemeral" not in names and "gw-001" in names
    finally:
        cloud.stop()


def test_seed_applied_again_duplicates_nothing(cloud):
    """Every start applies the seed; the second time it must find what the first made."""
    device_id = cloud.device_id()

    def configurations():
        """Without self links: the port, and so every link, changes at a restart."""
        listed = cloud.api().get(f"/service/remoteaccess/devices/{device_id}/configurations").json()
        return [{k: v for k, v in c.items() if k != "self"} for c in listed]

    before = configurations()
    cloud.restart()

    assert cloud.device_id() == device_id
    assert configurations() == before and len(before) == 2
    everything = cloud.api().get("/inventory/managedObjects?pageSize=100").json()["managedObjects"]
    assert sorted(mo["name"] for mo in everything) == ["gw-001", "gw-002"]


def test_seed_changes_are_applied_at_the_next_start(tmp_path):
    """A new password or configuration port in the seed takes effect; nothing is duplicated."""
    cloud = Cloud(tmp_path).start()
    try:
        device_id = cloud.device_id()
        seed = json.loads(json.dumps(SEED))
        seed[0]["users"][0]["password"] = "new-admin-pw"
        seed[0]["devices"][0]["configurations"][0]["port"] = 2222
        cloud.seed_path.write_text(json.dumps(seed))
        cloud.restart()

        assert cloud.api(ADMIN).get("/inventory/managedObjects").status_code == 401
        configs = cloud.api(("t100/admin", "new-admin-pw")).get(f"/service/remoteaccess/devices/{device_id}/configurations").json()
        assert [(c["name"], c["port"]) for c in configs] == [("ssh", 2222), ("vnc", 5900)]
    finally:
        cloud.stop()


@pytest.mark.parametrize("seed, complaint", [
    ("{not json", "not valid JSON"),
    ('{"users": []}', '"tenant" must be a non-empty string'),
    ('{"tenant": "t1", "users": [{"user": "a"}]}', 'users[0]: "password" must be a non-empty string'),
    ('{"tenant": "t1", "users": [{"user": "a", "password": "p", "roles": "ROLE_X"}]}', '"roles" must be a list of strings'),
    ('{"tenant": "t1", "devices": [{"externalId": "d", "configurations": [{"name": "x", "hostname": "h", "port": 70000}]}]}',
     'devices[0] configurations[0]: "port" must be a number from 1 to 65535'),
])
def test_a_bad_seed_is_refused_with_where_and_why(tmp_path, seed, complaint):
    path = tmp_path / "seed.json"
    path.write_text(seed)
    result = cra_cloud("--port", "0", "--seed", str(path))
    assert result.returncode == 2
    assert complaint in result.stderr and str(path) in result.stderr


def test_a_missing_seed_file_is_named(tmp_path):
    result = cra_cloud("--port", "0", "--seed", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "cannot read seed file" in result.stderr and "nope.json" in result.stderr


def _configuration_with_secret(cloud, secret):
    device_id = cloud.device_id()
    response = cloud.api().post(f"/service/remoteaccess/devices/{device_id}/configurations", json={
        "name": "ssh-key", "hostname": "127.0.0.1", "port": 22, "protocol": "SSH", "credentialsType": "USER_PASS",
        "credentials": {"username": "pi", "password": secret}})
    assert response.status_code == 201
    return response.json()


def _stored_bytes(cloud):
    """Everything sqlite holds on disk, write-ahead log included."""
    return b"".join(p.read_bytes() for p in cloud.workdir.glob("cloud.db*"))


def test_secrets_are_sealed_at_rest_with_an_encryption_password(make_cloud):
    cloud = make_cloud(args=["--encryption-salt", SALT], env={"CRA_CLOUD_ENCRYPTION_PASSWORD": "vault-pw"})
    config = _configuration_with_secret(cloud, "pi-Secret-4711")
    cloud.stop()
    stored = _stored_bytes(cloud)
    assert b"pi-Secret-4711" not in stored
    assert b"aes256gcm:" in stored
    assert "pi-Secret-4711" not in cloud.log() and "vault-pw" not in cloud.log()
    assert config["credentials"] == {"username": "pi"}


def test_without_an_encryption_password_secrets_are_stored_as_given(cloud):
    """The contrast that shows the test above can fail: the same secret is on disk in clear."""
    _configuration_with_secret(cloud, "pi-Secret-4711")
    cloud.stop()
    assert b"pi-Secret-4711" in _stored_bytes(cloud)


def test_secrets_sealed_under_another_password_are_reported_at_start(make_cloud):
    cloud = make_cloud(args=["--encryption-password", "first-pw", "--encryption-salt", SALT])
    config = _configuration_with_secret(cloud, "pi-Secret-4711")
    cloud.stop()
    cloud.args = ["--encryption-password", "second-pw", "--encryption-salt", SALT]
    cloud.start()
    assert f"credentials of configuration {config['id']} (ssh-key)" in cloud.log()
    assert "sealed under another encryption password" in cloud.log()
    assert cloud.api().get(f"/service/remoteaccess/devices/{cloud.device_id()}/configurations").status_code == 200


@pytest.mark.parametrize("args, complaint", [
    (["--encryption-password", "pw"], "give both the encryption password and the encryption salt"),
    (["--encryption-password", "pw", "--encryption-salt", "not-hex"], "must be a hex string"),
    (["--operation-timeout", "0"], "must be a positive number of seconds"),
    (["--idle-timeout", "soon"], "must be a positive number of seconds"),
    (["--db", "/nonexistent/dir/cloud.db"], "cannot open the database /nonexistent/dir/cloud.db"),
])
def test_bad_flags_are_refused_with_exit_code_2(args, complaint):
    result = cra_cloud("--port", "0", *args)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_reported_with_exit_code_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cra_cloud("--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help():
    assert cra_cloud("--version").stdout.startswith("cra-cloud ")
    help_text = cra_cloud("--help").stdout
    for flag in ("--port", "--db", "--seed", "--host", "--operation-timeout", "--idle-timeout",
                 "--encryption-password", "--encryption-salt"):
        assert flag in help_text


def test_sigterm_stops_it_with_exit_code_0(cloud):
    assert cloud.stop() == 0, cloud.log()


def test_a_configuration_switched_to_no_credentials_forgets_its_secret(cloud):
    """Nothing of a secret the user took back stays on disk, not even in freed database pages."""
    config = _configuration_with_secret(cloud, "pi-Secret-4711")
    device_id = cloud.device_id()
    response = cloud.api().put(f"/service/remoteaccess/devices/{device_id}/configurations/{config['id']}",
                               json={"credentialsType": "NONE"})
    assert response.status_code == 200
    cloud.stop()
    assert b"pi-Secret-4711" not in _stored_bytes(cloud)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_client_that_leaves_in_the_middle_of_its_body_is_no_internal_error(cloud, reset):
    """An agent whose link drops mid-request: one line saying so, no traceback, and the cloud goes on."""
    head = (f"POST /inventory/managedObjects HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(ADMIN)}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with socket.create_connection(("127.0.0.1", int(cloud.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(head.encode() + b'{"name":')
        time.sleep(0.3)  # the cloud is reading the body
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(lambda: "before its request was whole" in cloud.log(), "the cloud logging the client's leaving")
    assert "Traceback" not in cloud.log() and "internal error" not in cloud.log(), cloud.log()
    assert cloud.api(ADMIN).get("/inventory/managedObjects").status_code == 200
