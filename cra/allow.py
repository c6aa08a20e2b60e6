"""[agent] allow: the targets the agent may open a TCP connection to.

Whoever can create an operation for the device chooses its hostname and port, so without a list a
gateway would be a proxy from the cloud to anywhere it can reach, the internet included. The default
is loopback and the private networks, where the services a gateway fronts live.

An entry is ADDRESS, CIDR or HOSTNAME, each optionally :PORT or :PORT-PORT (an IPv6 address or
CIDR in brackets when a port follows: [fe80::/10]:22), or `any`. A target is allowed when

- a HOSTNAME entry names it (case-insensitive, exact; a trailing dot ignored) with its port: the
  owner named that host, so whatever it resolves to is accepted; or
- every address its name resolves to is in an ADDRESS or CIDR entry with its port. One address
  outside refuses the target, rather than connecting to the others only: a name that resolves
  partly outside the list is not one the owner meant to allow.

The caller resolves once and connects to the checked addresses themselves, never to the name
again: a second lookup could answer with another address (DNS rebinding).
"""
import ipaddress
import re
from dataclasses import dataclass

from cra.errors import AgentError

DEFAULT = "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 169.254.0.0/16 fc00::/7 fe80::/10"
ALL_PORTS = (1, 65535)
SYNTAX = "ADDRESS, CIDR or HOSTNAME, each optionally :PORT or :PORT-PORT (e.g. 10.0.0.0/8:22, " \
         "[fe80::/10]:22, plc.local:502-503), or any"
LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.I)


class AllowError(AgentError, ValueError):
    """An entry that is not one; the text names it."""


@dataclass(frozen=True)
class AllowList:
    text: str  # the entries as configured, separated by one space
    everything: bool  # `any` is among the entries
    networks: tuple  # (ip_network, (low, high))
    names: tuple  # (lowercase hostname, (low, high))

    def __str__(self):
        return self.text

    def refusal(self, target, hostname, port, addresses):
        """None when the target may be connected to; else the reason, for failureReason.

        `target` is how the operation names it (host:port), `addresses` what `hostname` resolved to.
        """
        if self.everything or any(name == _name(hostname) and _within(port, ports) for name, ports in self.names):
            return None
        outside = [a for a in addresses if not any(_address(a) in net and _within(port, ports)
                                                   for net, ports in self.networks)]
        if addresses and not outside:
            return None
        resolved = "" if outside in ([], [hostname]) else f" (it resolves to {', '.join(outside)})"
        which = " (default: loopback and private networks only)" if self.text == DEFAULT else ""
        return (f"target {target}{resolved} is not allowed by [agent] allow{which}; "
                f"the gateway's administrator can add it there")


def parse(raw):
    """The AllowList in an option's value (entries separated by spaces or commas); AllowError for a bad entry."""
    entries = [e for e in re.split(r"[\s,]+", raw) if e]
    if not entries:
        raise AllowError(f"no entries; give {SYNTAX}")
    networks, names = [], []
    for entry in entries:
        if entry.lower() == "any":
            continue
        host, ports = _split(entry)
        network, ports = _network(entry, host), _ports(entry, ports)
        if network is None:
            names.append((_name(host), ports))
        else:
            networks.append((network, ports))
    return AllowList(" ".join(entries), any(e.lower() == "any" for e in entries), tuple(networks), tuple(names))


def _split(entry):
    """(host, ports or "") from HOST, HOST:PORTS, [IPV6] or [IPV6]:PORTS; a bare IPv6 address or CIDR has no port."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or ":" not in host or (rest and not rest.startswith(":")):
            raise AllowError(f"{entry!r} is not {SYNTAX}")
        return host, rest[1:]
    if entry.count(":") == 1:
        host, _, ports = entry.partition(":")
        if host.lower() == "any":
            raise AllowError(f"{entry!r}: any allows every address and port, and takes no port")
        return host, ports
    return entry, ""


def _network(entry, host):
    """The ip_network an ADDRESS or CIDR is, None for a HOSTNAME; AllowError for neither."""
    try:
        if "%" in host:  # a scoped address (fe80::1%eth0): its CIDR says as much without the zone
            raise ValueError
        interface = ipaddress.ip_interface(host)
    except ValueError:
        if not _is_hostname(host):
            raise AllowError(f"{entry!r} is not {SYNTAX}") from None
        return None
    if interface.ip != interface.network.network_address:
        raise AllowError(f"{entry!r}: {host} has bits set past its prefix length; did you mean {interface.network}?")
    return interface.network


def _ports(entry, text):
    if not text:
        return ALL_PORTS
    low, dash, high = text.partition("-")
    bounds = (low, high) if dash else (low, low)
    if not all(b.isascii() and b.isdigit() and 1 <= int(b) <= 65535 for b in bounds):
        raise AllowError(f"{entry!r}: the port must be a number from 1 to 65535, or two of them as LOW-HIGH")
    if int(bounds[0]) > int(bounds[1]):
        raise AllowError(f"{entry!r}: the port range {text} is reversed; write it LOW-HIGH")
    return int(bounds[0]), int(bounds[1])


def _within(port, ports):
    return ports[0] <= port <= ports[1]


def _name(hostname):
    return hostname.lower().rstrip(".")


def _is_hostname(host):
    """Letters, digits, hyphens and underscores in dot-separated labels; a last label of digits only
    is a mistyped address (10.0.0.256), not a name."""
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _address(text):
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is checked as the IPv4 address it reaches."""
    address = ipaddress.ip_address(text)
    return getattr(address, "ipv4_mapped", None) or address


DEFAULT_LIST = parse(DEFAULT)
