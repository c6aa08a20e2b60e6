"""The real agent against operations no one would write by hand (issue 13): hypothesis generates
c8y_RemoteAccessConnect fragments (hostnames, ports and connection keys of every JSON type, control
characters, NUL, unicode, path pieces, sizes from empty to kilobytes, keys missing or extra, and
fragments that are not objects at all), an administrator posts each to a real cra-cloud, which
keeps them as they are, and one agent process takes them all, one after another.

What must hold for every one of them:

- the agent stays up, and afterwards still carries a real tunnel;
- the operation ends FAILED, with a failureReason that is a sentence of the agent's own (not the
  catch-all for an unexpected exception) on one line; neither it nor the agent's log shows the
  connection key whole;
- every request the agent makes is one of its usual REST calls, or the device WebSocket
  /service/remoteaccess/device/KEY for a KEY that was posted, byte for byte and made of URL-safe
  characters only: nothing of a hostile key (``../``, ``?``, ``#``, ``%2F``, spaces, CR LF,
  unicode, kilobytes) reaches a request line. A relay in front of the cloud writes down the request
  line of every request the agent sends, keep-alive and WebSocket upgrades included; cra-cloud's
  own access log cannot serve, as it masks connection keys.

Nothing generated can be connected to: the agent's [agent] allow is 127.0.0.1 on two ports, one
held bound but not listening (so connecting is refused) and the echo server of the last check;
every hostname is malformed (refused before any lookup) or a spelling of a loopback address that
the resolver reads without asking DNS (numeric forms, and localhost from /etc/hosts): no packet,
not even a DNS query, leaves 127.0.0.1.

Bounded: a hundred generated examples and a dozen written out, derandomized, about 10 s in all.
A port of more digits than Python converts to an int (4300) has a test of its own, below.
"""
import re
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from toolkit.middleboxes import CloudRelay
from toolkit.platform import add_configuration, create_operation
from toolkit.programs import wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import LOCALHOST, refused_port

FIELDS = ("hostname", "port", "connectionKey")
CATCH_ALL = "the agent could not handle the operation"
STATUS_TIMEOUT = 15

# The agent's REST calls, as request lines; a device WebSocket is checked on its own.
REST_CALLS = [re.compile(p) for p in (
    r"GET /tenant/loginOptions",
    r"GET /identity/externalIds/c8y_Serial/gw-001",
    r"(GET|PUT) /inventory/managedObjects/\d+",
    r"GET /devicecontrol/operations\?[^ #]*",
    r"PUT /devicecontrol/operations/\d+",
    r"POST /notification/operations",
    r"POST /event/events",
    r"GET /service/remoteaccess/devices/\d+/configurations",
)]
LISTING = {"deviceId": r"\d+", "status": r"PENDING|EXECUTING", "fragmentType": r"c8y_RemoteAccessConnect",
           "pageSize": r"\d+"}
DEVICE_LEG = re.compile(r"GET /service/remoteaccess/device/([^ ]*) HTTP/1\.1")
URL_SAFE_KEY = re.compile(r"[0-9A-Za-z-]+")


def unexpected_requests(lines, keys):
    """The request lines that are neither one of the agent's REST calls nor its device WebSocket
    for one of `keys` (the connection keys posted), URL-safe and byte for byte."""
    odd = []
    for line in lines:
        method_target, _, version = line.rpartition(" ")
        if version != "HTTP/1.1" or method_target.count(" ") != 1:
            odd.append(line)
            continue
        leg = DEVICE_LEG.fullmatch(line)
        if leg:
            if not (URL_SAFE_KEY.fullmatch(leg.group(1)) and leg.group(1) in keys):
                odd.append(line)
        elif not any(call.fullmatch(method_target) for call in REST_CALLS):
            odd.append(line)
        elif method_target.startswith("GET /devicecontrol/operations?"):
            query = parse_qsl(urlsplit(method_target.split(" ", 1)[1]).query, keep_blank_values=True)
            if not all(name in LISTING and re.fullmatch(LISTING[name], value) for name, value in query):
                odd.append(line)
    return odd


# What is generated. Text is any unicode but surrogates (which JSON cannot carry to the cloud).

FORBIDDEN = [" ", "\t", "\n", "\r", "\r\n", "/", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u3000"]
LOOPBACK_SPELLINGS = ["127.0.0.1", "127.0.0.2", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "127.0.0.1.",
                      "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0", "0", "localhost", "LOCALHOST",
                      "\uff11\uff12\uff17.\uff10.\uff10.\uff11"]  # fullwidth digits: IDNA makes them 127.0.0.1
PATH_PIECES = ["../../x", "/../../inventory/managedObjects", "/", "?", "?pageSize=2000", "#", "#frag", "%2F",
               "%2e%2e%2f", "%00", " ", "\t", "\r\nX-Injected: 1", "\x00", "\\", ";", "@127.0.0.1", ".", "..",
               "\u00e9", "\u202e", "\ufeff", "\U0001f600"]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
not_text = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | \
    st.lists(json_scalars, max_size=3) | st.dictionaries(st.text(max_size=8), json_scalars, max_size=3)
MISSING = object()  # a field left out of the fragment


def weighted(*choices):
    """One of the strategies, each as often as its weight says: [(weight, strategy), ...]."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda index: table[index])


# The agent connects only to what a name resolves to; none of these resolves beyond loopback, nor
# through DNS.
plausible_hostnames = weighted(
    (2, st.just(LOCALHOST)),
    (1, st.sampled_from(LOOPBACK_SPELLINGS)),
)
hostile_hostnames = st.one_of(
    st.builds(lambda a, bad, b: a + bad + b, st.text(max_size=30), st.sampled_from(FORBIDDEN), st.text(max_size=30)),
    st.sampled_from(["", " ", "\x00", "127.0.0.1\x00.example.com", "127.0.0.1/x", "127.0.0.1 ", "[127.0.0.1]:22"]),
    st.integers(254, 4000).map(lambda n: "a" * n),
    st.text(min_size=1, max_size=600).map(lambda t: "x" * 254 + t),
    not_text,
)
plausible_keys = st.one_of(st.from_regex(r"[0-9A-Za-z][0-9A-Za-z-]{7,127}", fullmatch=True), st.uuids().map(str))
hostile_keys = st.one_of(
    st.builds(lambda base, piece, tail: base + piece + tail,
              st.one_of(st.just(""), st.uuids().map(str), st.from_regex(r"[0-9a-z]{8}", fullmatch=True)),
              st.sampled_from(PATH_PIECES), st.text(max_size=20)),
    st.integers(129, 5000).map(lambda n: "k" * n),
    st.text(max_size=40),
    not_text,
)
hostile_ports = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=65536),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "0", "65536", "1e3", "0x16", "\u0662\u0662", "\uff12\uff12", "22\x00", "9" * 4301]),
    st.text(max_size=12),
    st.none() | st.booleans() | st.lists(st.integers(), max_size=2) |
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def field(plausible, hostile):
    return weighted((5, plausible), (4, hostile), (1, st.just(MISSING)))


def fragments(held_port):
    """c8y_RemoteAccessConnect values: mostly objects whose three fields are each plausible, hostile
    or missing (about one in eight all plausible), with other members maybe (never another spelling
    of the three: an extra "hostname" would be a hostname of any text); else anything else JSON has.
    A plausible port is the held one (connecting is refused) or any other, which [agent] allow refuses."""
    plausible_ports = st.one_of(
        st.just(held_port),
        st.integers(1, 65535),
        st.sampled_from([str(held_port), f"0{held_port}", f" {held_port}", f"{held_port} ", f"+{held_port}",
                         f"{held_port}.0", hex(held_port)]),
    )
    def fragment(extra, *values):
        return {**extra, **{name: value for name, value in zip(FIELDS, values) if value is not MISSING}}

    objects = st.builds(
        fragment,
        st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), json_values, max_size=3),
        field(plausible_hostnames, hostile_hostnames), field(plausible_ports, hostile_ports),
        field(plausible_keys, hostile_keys))
    return weighted((4, objects), (1, json_values.filter(lambda v: not isinstance(v, dict))))


@pytest.fixture
def recorder(cloud):
    """A CloudRelay in front of the cloud, for the agent's [c8y] url: it writes down the line of every
    request the agent sends, exactly as sent (cra-cloud's own access log masks connection keys)."""
    with CloudRelay(cloud.url) as relay:
        yield relay


def test_generated_operations_fail_with_a_reason_and_never_become_a_request_of_their_own(
        cloud, make_agent, users, recorder):
    """A hundred generated operations and a dozen written out (derandomized: the same ones on every
    run) through one agent; each example waits at most STATUS_TIMEOUT for its operation to end."""
    device_id = cloud.device_id()
    with refused_port() as held, EchoServer() as echo:
        agent = make_agent(cloud, options={"c8y": {"url": recorder.url},
                                           "agent": {"allow": f"{LOCALHOST}:{held} {LOCALHOST}:{echo.port}",
                                                     "connect_timeout": "3", "session_events": "false"}})
        agent.wait_for_log(r"operations: real-time notifications from")
        posted_keys, shown = set(), []

        @settings(max_examples=100, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(fragment=fragments(held))
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "abcdefgh/../../inventory"})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "abcdefgh?pageSize=2000"})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "abcdefgh#x"})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "abcdefgh%2F..%2Fx"})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "abcdefgh \r\nX-Injected: 1"})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "abcdefgh\u00e9"})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "k" * 5000})
        @example(fragment={"hostname": LOCALHOST, "port": held, "connectionKey": "0123456789abcdef"})
        @example(fragment={"hostname": "127.0.0.1\x00.example.com", "port": held, "connectionKey": "0123456789abcdef"})
        @example(fragment={"hostname": "localhost", "port": 22, "connectionKey": "0123456789abcdef"})
        @example(fragment=[{"hostname": LOCALHOST, "port": held, "connectionKey": "0123456789abcdef"}])
        @example(fragment=None)
        def operation_fails_cleanly(fragment):
            key = fragment.get("connectionKey") if isinstance(fragment, dict) else None
            if isinstance(key, str):
                posted_keys.add(key)
            requests_before, log_before = len(recorder.seen()), len(agent.log())
            op_id = create_operation(cloud, device_id, fragment)
            op = wait_for_status(cloud, op_id, timeout=STATUS_TIMEOUT)
            assert agent.proc.poll() is None, f"the agent exited ({agent.proc.returncode}):\n{agent.log()}"
            reason = op.get("failureReason")
            assert op["status"] == "FAILED", op
            assert isinstance(reason, str) and reason.strip(), op
            assert CATCH_ALL not in reason, reason
            assert not re.search(r"[\r\n\x00]", reason), repr(reason)
            # A key may be shown whole only where the operation's other fields already show it.
            if isinstance(key, str) and len(key) >= 8 and \
                    key not in repr({name: value for name, value in fragment.items() if name != "connectionKey"}):
                assert key not in reason, f"the connection key is shown whole: {reason!r}"
                assert key not in agent.log()[log_before:], f"the connection key is logged whole:\n{agent.log()}"
            odd = unexpected_requests(recorder.seen()[requests_before:], posted_keys)
            assert not odd and not recorder.unframed, (odd, recorder.unframed)
            shown.append(reason)

        started = time.monotonic()
        operation_fails_cleanly()
        elapsed = time.monotonic() - started

        # Still serving: a user reaches the echo server through it.
        config_id = add_configuration(cloud, device_id, LOCALHOST, echo.port)
        user = users.connect(cloud, device_id, config_id)
        posted_keys.add(user.connection_key)
        assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL", agent.log()
        assert user.echo(b"still here") == b"still here"
        user.close()
        assert agent.proc.poll() is None
        assert not unexpected_requests(recorder.seen(), posted_keys)
        device_legs = [line for line in recorder.seen() if DEVICE_LEG.fullmatch(line)]
        assert "Traceback" not in agent.log()
        print(f"{len(shown)} operations FAILED in {elapsed:.1f} s; {len(recorder.seen())} requests, "
              f"{len(device_legs)} of them device WebSockets; reasons seen: "
              f"{sorted({re.sub(r'[0-9]+', 'N', r.split(':')[0]) for r in shown})}")


def test_the_request_check_tells_a_hostile_key_in_a_request_line_from_a_posted_one():
    """The property above is only as good as this check: what a key's pieces would make of a request
    line, were they put in it, is caught; the agent's usual calls and a posted key are not."""
    key = "0123456789abcdef"
    usual = [f"GET /service/remoteaccess/device/{key} HTTP/1.1", "POST /notification/operations HTTP/1.1",
             "GET /devicecontrol/operations?deviceId=7&status=PENDING&fragmentType=c8y_RemoteAccessConnect"
             "&pageSize=100 HTTP/1.1", "PUT /devicecontrol/operations/12 HTTP/1.1"]
    hostile = [f"GET /service/remoteaccess/device/{key}/../../inventory HTTP/1.1",
               "GET /service/remoteaccess/inventory HTTP/1.1",
               f"GET /service/remoteaccess/device/{key}?pageSize=2000 HTTP/1.1",
               "GET /service/remoteaccess/device/01234567 HTTP/1.1",  # "01234567#x" cut at its fragment
               f"GET /service/remoteaccess/device/{key}%2F..%2Fx HTTP/1.1",
               f"GET /service/remoteaccess/device/{key} x HTTP/1.1",
               f"GET /service/remoteaccess/device/{key}",  # a request line cut by CR LF
               f"GET /service/remoteaccess/device/{key}\xc3\xa9 HTTP/1.1",
               "GET /devicecontrol/operations?deviceId=7&pageSize=2000&status=../x HTTP/1.1",
               "PUT /devicecontrol/operations/12/../13 HTTP/1.1"]
    assert unexpected_requests(usual, {key, "01234567#x"}) == []
    assert unexpected_requests(hostile, {key, f"{key}\u00e9", "01234567#x"}) == hostile


def test_a_port_of_more_digits_than_python_converts_fails_with_the_agents_own_reason(cloud, make_agent):
    """A port string of 4301 digits: the agent must say the port is out of range, as for 65536."""
    agent = make_agent(cloud)
    agent.wait_for_log(r"operations: real-time notifications from")
    op_id = create_operation(cloud, cloud.device_id(), {"hostname": LOCALHOST, "port": "9" * 4301,
                                                        "connectionKey": "0123456789abcdef"})
    op = wait_for_status(cloud, op_id)
    assert op["status"] == "FAILED"
    assert CATCH_ALL not in op["failureReason"], op["failureReason"]
    assert "port must be a number from 1 to 65535" in op["failureReason"]
