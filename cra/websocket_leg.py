"""The cloud end of a tunnel: the device WebSocket of WIRE.md section 4, and why it would not open."""
import base64
import socket
import ssl
from urllib.parse import urlsplit

import websocket

from cra.operation import masked

REFUSALS = {
    401: "check the device credentials ([c8y] user/password or token)",
    403: "the device user may not open remote access tunnels",
    404: "the connection key is unknown or used: the user's session ended or timed out before the agent connected",
}


class WebSocketLegError(Exception):
    pass


def open_device_websocket(config, connection_key, timeout):
    """A connected websocket-client WebSocket, blocking, with no timeout once it is up."""
    url = f"{config.websocket_url}/service/remoteaccess/device/{connection_key}"
    auth = f"Bearer {config.token}" if config.token else _basic(config)
    options = {"header": [f"Authorization: {auth}"], "subprotocols": ["binary"], "timeout": timeout,
               "enable_multithread": True, "skip_utf8_validation": True}
    if config.ca_file:
        options["sslopt"] = {"ca_certs": config.ca_file}
    if config.proxy:
        proxy = urlsplit(config.proxy)
        options.update(http_proxy_host=proxy.hostname, http_proxy_port=proxy.port or 80, proxy_type="http")
        if proxy.username:
            options["http_proxy_auth"] = (proxy.username, proxy.password or "")
    where = f"{config.websocket_url}/service/remoteaccess/device/{masked(connection_key)}"
    try:
        ws = websocket.create_connection(url, **options)
    except websocket.WebSocketBadStatusException as exc:
        status = getattr(exc, "status_code", None)
        advice = REFUSALS.get(status, "the cloud's remote access service did not accept it")
        raise WebSocketLegError(f"cloud refused the tunnel ({status}): {advice}") from None
    except (websocket.WebSocketTimeoutException, socket.timeout):
        raise WebSocketLegError(f"cloud did not open the tunnel within {timeout:g} s ({where})") from None
    except ssl.SSLError as exc:
        raise WebSocketLegError(f"TLS verification of the cloud failed ({exc.reason or exc}): "
                                f"check [c8y] url and ca_file") from None
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


def _basic(config):
    token = base64.b64encode(f"{config.tenant}/{config.user}:{config.password}".encode()).decode()
    return f"Basic {token}"
