"""[agent] allow in process (issue 13): the entries it takes and refuses, and which targets it allows.

Nothing here connects anywhere: refusal() is given the addresses a name would resolve to, so public
addresses are checked without a packet sent to them.
"""
import pytest

from cra.allow import DEFAULT, DEFAULT_LIST, AllowError, parse
from cra.config import ConfigError, load
from toolkit.programs import AGENT_CONFIG

REFUSED_BY_DEFAULT = "is not allowed by [agent] allow (default: loopback and private networks only); " \
                     "the gateway's administrator can add it there"


def allowed(allow, hostname, port, addresses=None):
    """Whether `allow` lets an operation for hostname:port through, hostname resolving to `addresses`
    (itself when it is an address)."""
    return allow.refusal(f"{hostname}:{port}", hostname, port, [hostname] if addresses is None else addresses) is None


# The default: loopback and private networks, so that a gateway is no open proxy to the internet.


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "::1", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254",
    "192.168.1.20", "169.254.10.1", "fc00::1", "fd12:3456::9", "fe80::1", "fe80::1%eth0", "::ffff:192.168.1.20"])
def test_the_default_allows_loopback_and_private_networks_on_every_port(address):
    assert allowed(DEFAULT_LIST, address, 22) and allowed(DEFAULT_LIST, address, 65535)


@pytest.mark.parametrize("address", [
    "203.0.113.5", "8.8.8.8", "172.32.0.1", "172.15.255.255", "192.169.0.1", "11.0.0.1", "0.0.0.0",
    "2001:db8::1", "::", "::ffff:203.0.113.5"])
def test_the_default_refuses_public_addresses(address):
    assert not allowed(DEFAULT_LIST, address, 22)


def test_a_refusal_says_what_was_refused_by_what():
    assert DEFAULT_LIST.refusal("203.0.113.5:22", "203.0.113.5", 22, ["203.0.113.5"]) == \
        f"target 203.0.113.5:22 {REFUSED_BY_DEFAULT}"
    assert parse("10.0.0.0/8").refusal("[2001:db8::1]:22", "2001:db8::1", 22, ["2001:db8::1"]) == \
        "target [2001:db8::1]:22 is not allowed by [agent] allow; the gateway's administrator can add it there"


def test_the_default_is_the_configured_default_and_reads_as_documented(tmp_path):
    path = tmp_path / "agent.conf"
    path.write_text(AGENT_CONFIG)
    config = load(path, environ={})
    assert config.allow == DEFAULT_LIST == parse(DEFAULT)
    assert str(config.allow) == "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 169.254.0.0/16 fc00::/7 fe80::/10"


# Names: a listed name is the owner's word for whatever it resolves to; any other name is checked
# by every address it resolves to, and one outside the list refuses it.


def test_a_listed_name_is_allowed_whatever_it_resolves_to():
    allow = parse("PLC.example:502")
    assert allowed(allow, "plc.example", 502, ["203.0.113.5"])
    assert allowed(allow, "Plc.Example.", 502, ["203.0.113.5"]), "case and a final dot do not make another host"
    assert not allowed(allow, "plc.example", 503, ["203.0.113.5"])
    assert not allowed(allow, "www.plc.example", 502, ["203.0.113.5"]), "a name is matched exactly"
    assert not allowed(allow, "203.0.113.5", 502), "the name allows the name, not its address"


def test_a_name_not_listed_is_allowed_only_when_every_address_it_resolves_to_is():
    allow = parse("10.0.0.0/8, 192.168.1.0/24:22")
    assert allowed(allow, "plc.lan", 22, ["10.1.2.3", "192.168.1.7"])
    assert not allowed(allow, "plc.lan", 80, ["10.1.2.3", "192.168.1.7"]), "192.168.1.7 only on port 22"
    reason = allow.refusal("plc.lan:22", "plc.lan", 22, ["10.1.2.3", "203.0.113.5", "2001:db8::1"])
    assert reason == "target plc.lan:22 (it resolves to 203.0.113.5, 2001:db8::1) is not allowed by [agent] allow; " \
                     "the gateway's administrator can add it there"
    assert not allowed(allow, "plc.lan", 22, []), "nothing resolved, nothing checked: refused"


def test_a_listed_name_and_address_entries_add_up():
    allow = parse("plc.lan:502 10.0.0.0/8:22")
    assert allowed(allow, "plc.lan", 22, ["10.1.2.3"]) and allowed(allow, "plc.lan", 502, ["203.0.113.5"])
    assert not allowed(allow, "plc.lan", 80, ["10.1.2.3"])


# Addresses, CIDRs, ports and ranges; IPv6 in brackets before a port.


def test_ports_and_port_ranges_bound_an_entry():
    allow = parse("192.168.1.10:22 10.0.0.0/8:8000-8010")
    assert allowed(allow, "192.168.1.10", 22) and not allowed(allow, "192.168.1.10", 23)
    assert not allowed(allow, "192.168.1.11", 22)
    assert [p for p in (7999, 8000, 8005, 8010, 8011) if allowed(allow, "10.9.8.7", p)] == [8000, 8005, 8010]
    ssh_anywhere = parse("0.0.0.0/0:22")
    assert allowed(ssh_anywhere, "203.0.113.5", 22) and not allowed(ssh_anywhere, "203.0.113.5", 23)


def test_ipv6_addresses_and_cidrs_with_and_without_a_port():
    allow = parse("[fe80::/10]:22 2001:db8::/32 [2001:db8:1::5]:443 ::1")
    assert allowed(allow, "fe80::1234", 22) and not allowed(allow, "fe80::1234", 23)
    assert allowed(allow, "2001:db8:ffff::1", 9) and allowed(allow, "::1", 1)
    assert allowed(allow, "2001:db8:1::5", 443)
    assert not allowed(allow, "2001:db9::1", 22) and not allowed(allow, "127.0.0.1", 22), "IPv4 is not in an IPv6 CIDR"


def test_an_ipv4_mapped_address_is_checked_as_the_ipv4_address_it_reaches():
    allow = parse("10.0.0.0/8")
    assert allowed(allow, "::ffff:10.1.2.3", 22) and not allowed(allow, "::ffff:203.0.113.5", 22)


def test_any_allows_everything():
    for allow in (parse("any"), parse("ANY"), parse("10.0.0.0/8, any")):
        assert allowed(allow, "203.0.113.5", 22) and allowed(allow, "example.com", 1, ["2001:db8::1"])


def test_spaces_and_commas_separate_entries_and_the_list_reads_back_as_given():
    allow = parse(" 10.0.0.1 ,192.168.0.0/16:22-23,\n plc.lan  ")
    assert str(allow) == "10.0.0.1 192.168.0.0/16:22-23 plc.lan"
    assert allowed(allow, "10.0.0.1", 5) and allowed(allow, "192.168.3.3", 23) and allowed(allow, "plc.lan", 9, ["1.1.1.1"])


# Mistakes: refused at load, naming the file, the option and the entry.


@pytest.mark.parametrize("value, complaint", [
    ("10.0.0.256", "'10.0.0.256' is not ADDRESS, CIDR or HOSTNAME, each optionally :PORT or :PORT-PORT"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not ADDRESS, CIDR or HOSTNAME"),
    ("10.0.0.1/8", "'10.0.0.1/8': 10.0.0.1/8 has bits set past its prefix length; did you mean 10.0.0.0/8?"),
    ("10.0.0.0/8:0", "'10.0.0.0/8:0': the port must be a number from 1 to 65535"),
    ("10.0.0.0/8:65536", "'10.0.0.0/8:65536': the port must be a number from 1 to 65535"),
    ("plc.lan:ssh", "'plc.lan:ssh': the port must be a number"),
    ("plc.lan:22-", "'plc.lan:22-': the port must be a number"),
    ("plc.lan:23-22", "'plc.lan:23-22': the port range 23-22 is reversed"),
    ("[10.0.0.1]:22", "'[10.0.0.1]:22' is not ADDRESS"),
    ("[fe80::/10:22", "'[fe80::/10:22' is not ADDRESS"),
    ("[fe80::/10]22", "'[fe80::/10]22' is not ADDRESS"),
    ("fe80::1%eth0", "'fe80::1%eth0' is not ADDRESS"),
    ("any:22", "'any:22': any allows every address and port, and takes no port"),
    ("plc..lan", "'plc..lan' is not ADDRESS"),
    ("-plc.lan", "'-plc.lan' is not ADDRESS"),
    ("http://plc.lan", "'http://plc.lan': the port must be a number"),
    ("plc.lan/24", "'plc.lan/24' is not ADDRESS"),
    ("10.0.0.0/8 plc@lan", "'plc@lan' is not ADDRESS"),
    (",", "no entries"),
])
def test_a_bad_entry_is_refused_at_load_with_the_file_the_option_and_the_entry(tmp_path, value, complaint):
    path = tmp_path / "agent.conf"
    path.write_text(AGENT_CONFIG + f"allow = {value}\n")
    with pytest.raises(ConfigError) as refused:
        load(path, environ={})
    assert str(refused.value).startswith(f"{path}: [agent] allow: ")
    assert complaint in str(refused.value)
    with pytest.raises(AllowError):
        parse(value)


def test_a_bad_entry_in_the_environment_names_the_variable(tmp_path):
    path = tmp_path / "agent.conf"
    path.write_text(AGENT_CONFIG)
    with pytest.raises(ConfigError, match=r"^environment CRA_AGENT_ALLOW: '10\.0\.0\.0/8:x': the port must be"):
        load(path, environ={"CRA_AGENT_ALLOW": "10.0.0.0/8:x"})
    assert str(load(path, environ={"CRA_AGENT_ALLOW": "any"}).allow) == "any"
