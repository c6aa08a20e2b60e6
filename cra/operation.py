"""A c8y_RemoteAccessConnect operation, checked before anything is opened on its behalf."""
import re
from dataclasses import dataclass

from cra.c8y import CONNECT_FRAGMENT

# UUID-like: what the platform sends, and nothing that could leave the URL path it is put in.
CONNECTION_KEY = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{7,127}")
# No spaces, slashes or control characters: getaddrinfo stops at a NUL and would reach another host.
HOSTNAME = re.compile(r"[^\s/\x00-\x1f\x7f-\x9f]{1,253}")


class InvalidOperation(ValueError):
    pass


@dataclass(frozen=True)
class ConnectRequest:
    operation_id: str
    hostname: str
    port: int
    connection_key: str

    @property
    def target(self):
        return f"[{self.hostname}]:{self.port}" if ":" in self.hostname else f"{self.hostname}:{self.port}"


def masked(secret):
    """Enough of a connection key to match a log line with the cloud's, not enough to use it."""
    return secret[:4] + "..."


def parse(operation):
    """The ConnectRequest in an operation, or InvalidOperation with the reason for failureReason."""
    fragment = operation.get(CONNECT_FRAGMENT)
    if not isinstance(fragment, dict):
        raise InvalidOperation(f"invalid operation: {CONNECT_FRAGMENT} is missing or not an object")
    hostname, port, key = fragment.get("hostname"), fragment.get("port"), fragment.get("connectionKey")
    if not isinstance(hostname, str) or not HOSTNAME.fullmatch(hostname):
        raise InvalidOperation(f"invalid operation: hostname must be a host name or address, not {hostname!r}")
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidOperation(f"invalid operation: port must be a number from 1 to 65535, not {port!r}")
    if not isinstance(key, str) or not CONNECTION_KEY.fullmatch(key):
        shown = masked(key) if isinstance(key, str) else repr(key)
        raise InvalidOperation(f"invalid operation: connectionKey must be a UUID-like token of letters, "
                               f"digits and dashes, not {shown}")
    return ConnectRequest(str(operation["id"]), hostname, port, key)
