"""A c8y_RemoteAccessConnect operation, checked before anything is opened on its behalf."""
import ipaddress
import re
from dataclasses import dataclass

from cra.c8y import CONNECT_FRAGMENT
from cra.errors import AgentError

# UUID-like: what the platform sends, and nothing that could leave the URL path it is put in.
CONNECTION_KEY = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{7,127}")
# A DNS label as gateways' networks name hosts (underscores included); IDNA names are checked in their
# ASCII form. Nothing else reaches getaddrinfo, which stops at a NUL and would reach another host.
LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class InvalidOperation(AgentError, ValueError):
    """Why an operation is refused, and its connection key when that is usable: its user can then be told."""

    def __init__(self, message, connection_key=None):
        super().__init__(message)
        self.connection_key = connection_key


@dataclass(frozen=True)
class ConnectRequest:
    operation_id: str
    hostname: str
    port: int
    connection_key: str

    @property
    def target(self):
        return f"[{self.hostname}]:{self.port}" if ":" in self.hostname else f"{self.hostname}:{self.port}"


def is_host(text):
    """An IP address (IPv6 with its zone, if any), or a host name of DNS labels."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    try:
        name = text.encode("idna").decode("ascii")
    except UnicodeError:  # an empty or overlong label, or what IDNA cannot map
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    return len(name) <= 253 and all(LABEL.fullmatch(label) for label in labels)


def masked(secret):
    """Enough of a connection key to match a log line with the cloud's, not enough to use it."""
    return secret[:4] + "..."


def parse(operation):
    """The ConnectRequest in an operation, or InvalidOperation with the reason for failureReason."""
    fragment = operation.get(CONNECT_FRAGMENT)
    if not isinstance(fragment, dict):
        raise InvalidOperation(f"invalid operation: {CONNECT_FRAGMENT} is missing or not an object")
    hostname, port, key = fragment.get("hostname"), fragment.get("port"), fragment.get("connectionKey")
    usable_key = key if isinstance(key, str) and CONNECTION_KEY.fullmatch(key) else None
    if not isinstance(hostname, str) or not is_host(hostname):
        raise InvalidOperation(f"invalid operation: hostname must be a host name or address, not {hostname!r}", usable_key)
    if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5:  # int() stops at 4300 digits
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidOperation(f"invalid operation: port must be a number from 1 to 65535, not {port!r}", usable_key)
    if not usable_key:
        shown = masked(key) if isinstance(key, str) else repr(key)
        raise InvalidOperation(f"invalid operation: connectionKey must be a UUID-like token of letters, "
                               f"digits and dashes, not {shown}")
    return ConnectRequest(str(operation["id"]), hostname, port, key)
