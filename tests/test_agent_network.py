"""The agent's way to the platform (issue 3): TLS verified, against the system's CAs or the PEM
of [c8y] ca_file, and an HTTP(S) proxy from [c8y] proxy or the environment, for the REST calls
and the tunnel's WebSocket alike.

A gateway on a site network reaches its tenant through the site's proxy, and an edge or
on-premises tenant often has a private CA: when either is not honoured on one of the two legs,
the device shows up but its tunnels fail, or the agent trusts what it should not. cra-cloud
serves plain HTTP, so the agent reaches it through a TLS terminator or an HTTP proxy of the
test's own (tests/toolkit/middleboxes.py) while the user's tool connects to the cloud directly: only
the agent's legs take the path under test. Everything is on 127.0.0.1.
"""
import ipaddress
import re
import ssl
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from urllib.parse import urlsplit

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from toolkit.middleboxes import HttpProxy, TlsTerminator
from toolkit.platform import add_configuration, operation
from toolkit.programs import wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import LOCALHOST
from toolkit.waiting import log_lines, wait_for_log_count

NETWORK_ENVIRONMENT = ["http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUESTS_CA_BUNDLE",
                       "CURL_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE"]
REGISTERED = r"device gw-001 is managed object"
SETTLE = 10  # seconds for what takes the agent well under one: registering, serving an operation


@pytest.fixture(autouse=True)
def clean_network_environment(monkeypatch):
    """The agent inherits the runner's environment, where a proxy or a CA bundle (the
    machine these tests were written on sets REQUESTS_CA_BUNDLE) would decide the outcome: each
    test sets what it tests."""
    for name in NETWORK_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A private CA and a server certificate it issued for 127.0.0.1 and localhost, as PEM files."""
    return issue_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_cloud(cloud, pki):
    """The cloud behind TLS with the private CA's certificate, as an on-premises tenant is."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    with TlsTerminator(cloud.url, context) as terminator:
        yield terminator


def issue_certificates(directory):
    """The extensions a strict verifier asks for (key identifiers, key usage) are there, so that
    only a missing trust anchor, never a sloppy certificate, makes verification fail."""
    now = datetime.now(timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cra-agent test CA")])

    def certificate(subject, key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    usage = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
    ca = certificate(ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(**{**usage, "key_cert_sign": True, "crl_sign": True}), True)])
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOCALHOST)]), server_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(**{**usage, "digital_signature": True}), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCALHOST)), x509.DNSName("localhost")]),
         False)])

    files = SimpleNamespace(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return files


def start_agent(make_agent, cloud, c8y, env=None):
    """The real agent with these [c8y] options, once it has registered (its log shown if it does not)."""
    agent = make_agent(cloud, options={"c8y": c8y}, env=env)
    agent.wait_for_log(REGISTERED, timeout=SETTLE)
    return agent


def connect_to_echo(cloud, users, echo):
    """A user's session to the local echo service, connected to the plain cloud: its operation is
    PENDING until the agent serves it."""
    device_id = cloud.device_id()
    return users.connect(cloud, device_id, add_configuration(cloud, device_id, LOCALHOST, echo.port))


def assert_tunnel_carries_data(cloud, users, echo):
    """What the user checks: bytes go to the gateway's service and back, and the operation is
    SUCCESSFUL. Returns the operation's id."""
    user = connect_to_echo(cloud, users, echo)
    assert wait_for_status(cloud, user.op_id, timeout=SETTLE)["status"] == "SUCCESSFUL"
    assert user.echo(b"through the gateway's network") == b"through the gateway's network"
    return user.op_id


# TLS


@pytest.mark.parametrize("environment", [
    {},
    # A CA bundle in the environment (as some distributions and corporate images set it, and as
    # the machine these tests were written on does) must not take the place of the CA the file names.
    {"REQUESTS_CA_BUNDLE": certifi.where()},
], ids=["clean-environment", "REQUESTS_CA_BUNDLE-set"])
def test_with_ca_file_the_agent_works_over_verified_tls(cloud, https_cloud, pki, make_agent, users, echo, environment):
    """With the private CA in [c8y] ca_file, both legs verify the certificate and work: REST over
    https:// and the tunnel over wss://, to the same TLS front."""
    start_agent(make_agent, cloud, {"url": https_cloud.url, "ca_file": pki.ca}, env=environment)
    assert_tunnel_carries_data(cloud, users, echo)


def test_without_ca_file_an_untrusted_certificate_is_refused_and_said_so(cloud, https_cloud, make_agent, users, echo):
    """Without ca_file the private CA is not trusted: the agent must not talk to that platform,
    must say in its log that TLS verification failed (the line an installer searches for), and
    must keep running, retrying, so that adding the CA and restarting is all that is needed."""
    agent = make_agent(cloud, options={"c8y": {"url": https_cloud.url}})
    agent.wait_for_log(r"TLS verification failed", timeout=SETTLE)

    user = connect_to_echo(cloud, users, echo)
    refusals = len(log_lines(agent, r"TLS verification failed"))
    wait_for_log_count(agent, r"TLS verification failed", refusals + 2, timeout=SETTLE)  # retried since the user came
    assert operation(cloud, user.op_id)["status"] == "PENDING"
    assert agent.proc.poll() is None
    assert "Traceback" not in agent.log()


# Proxy


@pytest.fixture
def proxies():
    """HttpProxy(...) for a test, each closed (and its threads joined) when the test ends."""
    opened = []

    def make(**kwargs):
        opened.append(HttpProxy(**kwargs))
        return opened[-1]

    yield make
    for proxy in opened:
        proxy.close()


def assert_went_through(proxy, cloud, op_id):
    """Both of the agent's ways to the cloud went through `proxy`: the REST calls (the operation's
    status updates among them) as absolute-form requests, and the tunnel's WebSocket as a CONNECT."""
    assert ("PUT", f"{cloud.url}/devicecontrol/operations/{op_id}") in proxy.handled, \
        f"the operation's status was not set through the proxy; it handled {proxy.handled}"
    assert ("CONNECT", urlsplit(cloud.url).netloc) in proxy.handled, \
        f"the tunnel's WebSocket did not go through the proxy; it handled {proxy.handled}"


@pytest.mark.parametrize("given", ["config", "environment", "config-over-environment"])
def test_rest_and_the_tunnel_go_through_the_proxy(cloud, make_agent, proxies, users, echo, given):
    """The site's proxy is named in [c8y] proxy or, as on many gateways, only in http_proxy;
    either way both legs take it (a site firewall lets nothing else out), and the notifications,
    whose connects are then held for less than a minute: the agent's TCP keepalive reaches only the
    proxy. With both, the file wins, as etc/cra-agent.conf says: the environment's proxy sees nothing."""
    proxy, elsewhere = proxies(), proxies()
    c8y, env = {
        "config": ({"proxy": proxy.url}, {}),
        "environment": ({}, {"http_proxy": proxy.url}),
        "config-over-environment": ({"proxy": proxy.url}, {"http_proxy": elsewhere.url}),
    }[given]
    agent = start_agent(make_agent, cloud, c8y, env=env)
    agent.wait_for_log(r"operations: real-time notifications from .*, each connect held 50 s at most through the proxy")
    op_id = assert_tunnel_carries_data(cloud, users, echo)
    assert_went_through(proxy, cloud, op_id)
    assert ("POST", f"{cloud.url}/notification/operations") in proxy.handled
    assert elsewhere.handled == []


def test_a_proxy_that_refuses_the_tunnel_fails_the_operation_saying_so(cloud, make_agent, proxies, users, echo):
    """A site proxy that passes plain requests but refuses CONNECT lets the device register while
    every tunnel fails: the operation must say it was the proxy (and what it answered), so the
    user asks the site's network admin rather than debugging the gateway; the agent takes the next
    operation as it took the first."""
    proxy = proxies(refuse_connect=True)
    agent = start_agent(make_agent, cloud, {"proxy": proxy.url})
    user = connect_to_echo(cloud, users, echo)

    failed = wait_for_status(cloud, user.op_id, timeout=SETTLE)
    assert failed["status"] == "FAILED"
    assert re.search(r"proxy", failed["failureReason"], re.I) and "403" in failed["failureReason"], failed
    assert ("CONNECT", urlsplit(cloud.url).netloc) in proxy.handled

    again = wait_for_status(cloud, connect_to_echo(cloud, users, echo).op_id, timeout=SETTLE)
    assert again["status"] == "FAILED" and "403" in again["failureReason"], again
    assert agent.proc.poll() is None
    assert "Traceback" not in agent.log()
