"""What the platform's own clients read first (docs/wire.md section 6), a tenant without Cloud Remote
Access, and cra-cloud serving https and wss: answered as a real tenant answers them."""
import subprocess
import sys

import certifi
import pytest
import requests
import websocket

from toolkit.programs import ADMIN, ADMIN_T200, DEVICE, DEVICE_T200, VIEWER, Cloud, basic

UNSUBSCRIBED = {"error": "microservice/Not Found",
                "message": "Microservice/application cloud-remote-access is not subscribed by tenant t100"}


@pytest.fixture(scope="module")
def tls_cloud(tmp_path_factory):
    """One TLS cra-cloud (tenants t100 and t200), with t100 not subscribed to Cloud Remote Access."""
    instance = Cloud(tmp_path_factory.mktemp("tls"), tls=True, args=["--unsubscribed-tenant", "t100"]).start()
    yield instance
    instance.stop()


def test_it_listens_on_https_and_plain_http_gets_no_answer(tls_cloud):
    assert tls_cloud.url.startswith("https://127.0.0.1:")
    assert tls_cloud.api(ADMIN).get("/inventory/managedObjects").status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get("http" + tls_cloud.url[len("https"):] + "/tenant/loginOptions", timeout=10)


def test_a_client_that_does_not_trust_the_authority_is_refused(tls_cloud):
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(tls_cloud.url + "/tenant/loginOptions", verify=certifi.where(), timeout=10)


def test_login_options_are_public_and_name_the_tenant(tls_cloud):
    """c8ylp learns its tenant id from the OAuth option's initRequest, before it has signed in."""
    answer = tls_cloud.api(None).get("/tenant/loginOptions")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/vnd.com.nsn.cumulocity.loginoptioncollection+json")
    options = {option["type"]: option for option in answer.json()["loginOptions"]}
    assert set(options) == {"OAUTH2_INTERNAL", "BASIC"}
    assert options["OAUTH2_INTERNAL"]["initRequest"] == f"{tls_cloud.url}/tenant/oauth?tenant_id=t100"
    assert options["OAUTH2_INTERNAL"]["grantType"] == "PASSWORD"
    named = tls_cloud.api(None).get("/tenant/loginOptions", params={"tenant_id": "t200"}).json()["loginOptions"]
    assert named[0]["initRequest"].endswith("tenant_id=t200")


@pytest.mark.parametrize("auth, roles", [
    (ADMIN, ["ROLE_REMOTE_ACCESS_ADMIN"]), (VIEWER, []), (DEVICE, []), (ADMIN_T200, ["ROLE_REMOTE_ACCESS_ADMIN"]),
], ids=["admin", "viewer", "device", "admin-t200"])
def test_current_user_lists_the_effective_roles(tls_cloud, auth, roles):
    answer = tls_cloud.api(auth).get("/user/currentUser")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["userName"] == auth[0].split("/")[1]
    assert [role["id"] for role in body["effectiveRoles"]] == roles


def test_current_user_needs_credentials(tls_cloud):
    answer = tls_cloud.api(None).get("/user/currentUser")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="Cumulocity"'


@pytest.mark.parametrize("auth, tenant", [(ADMIN, "t100"), (DEVICE_T200, "t200")])
def test_current_tenant_is_the_signed_in_users(tls_cloud, auth, tenant):
    body = tls_cloud.api(auth).get("/tenant/currentTenant").json()
    assert (body["name"], body["domainName"]) == (tenant, "127.0.0.1")


def test_the_oauth_cookies_are_secure_over_https(tls_cloud):
    """A browser, or c8ylp's requests session, sends them back only over https."""
    answer = tls_cloud.api(None).post("/tenant/oauth?tenant_id=t100", data={
        "grant_type": "PASSWORD", "username": "admin", "password": ADMIN[1]})
    assert answer.status_code == 200, answer.text
    cookies = {cookie.name: cookie for cookie in answer.cookies}
    assert set(cookies) == {"authorization", "XSRF-TOKEN"} and all(c.secure for c in cookies.values())


def test_an_unsubscribed_tenant_answers_404_to_every_remote_access_request(tls_cloud):
    """Configurations, the client endpoint and the device endpoint: all 404 with the same body, before any
    upgrade; the rest of the tenant's API, and another tenant's remote access, work as before."""
    device_id = tls_cloud.device_id()
    answer = tls_cloud.api(ADMIN).get(f"/service/remoteaccess/devices/{device_id}/configurations")
    assert (answer.status_code, {k: answer.json()[k] for k in ("error", "message")}) == (404, UNSUBSCRIBED)
    for path, auth in ((f"/service/remoteaccess/client/{device_id}/configurations/1", ADMIN),
                       ("/service/remoteaccess/device/0b8a9a47-2a1c-4d1e-9d3f-3f0e4a1b2c3d", DEVICE)):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(tls_cloud.ws_url + path, header={"Authorization": basic(auth)},
                                        sslopt={"ca_certs": tls_cloud.ca_file}, timeout=10)
        assert refused.value.status_code == 404
    assert tls_cloud.api(ADMIN).get(f"/inventory/managedObjects/{device_id}").status_code == 200
    other = tls_cloud.device_id("gw-900", auth=ADMIN_T200)
    assert tls_cloud.api(ADMIN_T200).get(f"/service/remoteaccess/devices/{other}/configurations").status_code == 200
    assert tls_cloud.api(None).get("/service/remoteaccess/health").status_code == 200


@pytest.mark.parametrize("flags, complaint", [
    (["--certfile", "{server}"], "--certfile and --keyfile go together"),
    (["--keyfile", "{key}"], "--certfile and --keyfile go together"),
    (["--certfile", "/nonexistent/server.pem", "--keyfile", "{key}"], "cannot read /nonexistent/server.pem"),
    (["--certfile", "{server}", "--keyfile", "{ca}"], "cannot serve TLS with"),
], ids=["certfile-alone", "keyfile-alone", "missing-file", "not-a-key"])
def test_tls_flags_that_cannot_serve_are_refused_with_exit_code_2(tls_cloud, flags, complaint):
    tls = tls_cloud.workdir / "tls"
    paths = {"server": tls / "server.pem", "key": tls / "server.key", "ca": tls / "ca.pem"}
    result = subprocess.run([sys.executable, "-m", "cra.cloud", "--port", "0", *(f.format(**paths) for f in flags)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr and "Traceback" not in result.stderr, result.stderr
