"""Opening a remote access WebSocket (docs/wire.md section 4) and saying, in words, why one would not open.

The agent opens the device end; cra-connect opens the client end. Both offer `binary`, send the
Authorization of section 1, verify TLS, and go through the proxy REST uses (c8y.proxy_url).
"""
import functools
import socket
import ssl
from urllib.parse import urlsplit

import websocket

from cra.c8y import NOT_SUBSCRIBED, proxy_url, tls_failure
from cra.errors import AgentError
from cra.operation import masked

# A proxy is used for every host: websocket-client, given no exceptions, falls back to its own
# (localhost, 127.0.0.1), so it is given one that names no host.
NO_EXCEPTIONS = ["no-proxy-exceptions.invalid"]
CLOSE_REASON_BYTES = 123  # what a close frame has room for after its code
DEVICE_REFUSALS = {
    401: "check the device credentials ([c8y] user/password or token)",
    403: "the device user may not open remote access tunnels",
    404: f"the connection key is unknown or used (the user's session ended or timed out before the agent connected), or {NOT_SUBSCRIBED}",
}


class WebSocketLegError(AgentError):
    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


@functools.lru_cache(maxsize=None)
def tls_context(ca_file):
    """One per CA file ("" for the system's), shared by every tunnel: websocket-client would make one
    per connection and load every CA into it again, about 0.8 MiB a tunnel (docs/BENCHMARKS.md)."""
    return ssl.create_default_context(cafile=ca_file or None)


def open_device_websocket(access, connection_key, timeout):
    """The agent's leg of the tunnel for one connection key."""
    path = "/service/remoteaccess/device/"
    return open_websocket(access, path + connection_key, timeout, DEVICE_REFUSALS, shown=path + masked(connection_key))


def open_websocket(access, path, timeout, refusals, shown=None):
    """A connected websocket-client WebSocket, blocking with no timeout once it is up; or
    WebSocketLegError with the HTTP status when the cloud refused, and `refusals` advice for it."""
    where = access.websocket_url + (shown or path)
    options = {"header": [f"Authorization: {access.authorization}"], "subprotocols": ["binary"],
               "timeout": timeout, "enable_multithread": True, "skip_utf8_validation": True}
    if access.websocket_url.startswith("wss:"):
        options["sslopt"] = {"context": tls_context(access.ca_file)}
    proxy = proxy_url(access)
    if proxy:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        options.update(http_proxy_host=parts.hostname, http_proxy_port=parts.port or 80, proxy_type="http",
                       http_no_proxy=NO_EXCEPTIONS)
        if parts.username:
            options["http_proxy_auth"] = (parts.username, parts.password or "")
    else:
        options["http_no_proxy"] = ["*"]  # no proxy for this URL: not one websocket-client finds by itself either
    try:
        ws = websocket.create_connection(access.websocket_url + path, **options)
    except websocket.WebSocketBadStatusException as exc:
        status = getattr(exc, "status_code", None)
        advice = refusals.get(status, "the cloud's remote access service did not accept it")
        raise WebSocketLegError(f"cloud refused the tunnel ({status}): {advice}", status) from None
    except (websocket.WebSocketTimeoutException, socket.timeout):
        raise WebSocketLegError(f"cloud did not open the tunnel within {timeout:g} s ({where})") from None
    except ssl.SSLError as exc:
        raise WebSocketLegError(f"cannot open the tunnel to the cloud ({where}): {tls_failure(str(exc))}") from None
    except websocket.WebSocketProxyException as exc:
        raise WebSocketLegError(f"the proxy did not open the tunnel: {exc}") from None
    except websocket.WebSocketAddressException:
        raise WebSocketLegError(f"cannot reach the cloud for the tunnel: host name not found ({where})") from None
    except ConnectionRefusedError:
        raise WebSocketLegError(f"cannot reach the cloud for the tunnel: connection refused ({where})") from None
    except (websocket.WebSocketException, OSError) as exc:
        raise WebSocketLegError(f"cannot open the tunnel to the cloud ({where}): {exc}") from None
    ws.settimeout(None)
    return ws
