"""The platform's REST API, as much as the agent and cra-connect use (docs/wire.md sections 1-3, 5), over one session.

Every failure becomes one of two exceptions whose text is a sentence for the log: CloudError
(the platform answered, and said no) or CloudUnreachable (no usable answer at all).
"""
import datetime
import logging
import re
import socket
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from cra import __version__
from cra.errors import AgentError

MEDIA = "application/vnd.com.nsn.cumulocity.{}+json"
CONNECT_FRAGMENT = "c8y_RemoteAccessConnect"
NOTIFICATIONS = "/notification/operations"
# Every failure becomes a sentence here; urllib3's own warnings would say it again at length (1.26 logs
# a certificate that names another host, whole, before it raises).
logging.getLogger("urllib3").setLevel(logging.ERROR)
POOL_SIZE = 4  # connections to the tenant at once, per client (the notification feed has one of its own)
KEEPALIVE_PROBES = 3
KEEPALIVE_MAX = 32767  # s: the most Linux takes for TCP_KEEPIDLE
# What the platform's remote access troubleshooting table says to do about the refusals a tool sees.
MISSING_ROLE = ("the user needs the role ROLE_REMOTE_ACCESS_ADMIN: in Administration > Accounts > Users, "
                "give the user a global role with Remote access")
NOT_SUBSCRIBED = ("the tenant is not subscribed to Cloud Remote Access: subscribe the cloud-remote-access "
                  "microservice in Administration > Applications (every /service/remoteaccess request answers 404 until then)")
# An SSH configuration's client leg carries a terminal the platform's own SSH client runs, not the target's bytes.
PLATFORM_RUNS_SSH = ("its protocol is SSH, and for SSH configurations the platform runs SSH itself (the web UI's "
                     "terminal), so a local proxy gets no SSH to carry; create a PASSTHROUGH configuration for the same "
                     "host and port, and connect to that")


class CloudUnreachable(AgentError):
    pass


class CloudError(AgentError):
    def __init__(self, status, message):
        super().__init__(f"{message} ({status})")
        self.status = status


def proxy_url(access):
    """The one proxy both legs use: [c8y] proxy, else what https_proxy, http_proxy and no_proxy say
    for the tenant's URL, else none. Decided here once, so REST and tunnels never disagree."""
    if access.proxy:
        return access.proxy
    return requests.utils.get_environ_proxies(access.url).get(urlsplit(access.url).scheme, "")


def keepalive_options(idle):
    """TCP keepalive on every connection to the tenant: a long poll held over a link that a NAT or a
    firewall dropped without a word is found dead within 2 x `idle` seconds (the probes also keep
    such a NAT's entry alive), instead of waiting for an answer that cannot come. Through a proxy
    the probes reach only the proxy (cra.feed asks for short holds there)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    seconds = min(max(1, round(idle)), KEEPALIVE_MAX)
    for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", max(1, seconds // KEEPALIVE_PROBES)),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):  # Linux has all three; other systems fewer
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return HTTPConnection.default_socket_options + options


class _KeepaliveAdapter(HTTPAdapter):
    """Keepalive on every connection, and at most POOL_SIZE of them to the tenant: a burst of operations
    waits its turn for one (pool_block) instead of opening more, which urllib3 would drop afterwards
    with a "Connection pool is full" warning each, an operator reads as faults."""

    def __init__(self, socket_options):
        self._socket_options = socket_options
        super().__init__(pool_connections=1, pool_maxsize=POOL_SIZE, pool_block=True)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, socket_options=self._socket_options, **kwargs)

    def proxy_manager_for(self, proxy, **kwargs):
        return super().proxy_manager_for(proxy, socket_options=self._socket_options, **kwargs)


class C8y:
    def __init__(self, access):
        self._base = access.url
        self._session = requests.Session()
        adapter = _KeepaliveAdapter(keepalive_options(access.keepalive))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Authorization"] = access.authorization
        self._session.headers["User-Agent"] = f"cra-agent/{__version__}"
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE and *_proxy override a session's own.
        self._options = {"timeout": access.request_timeout}
        if access.ca_file:
            self._options["verify"] = access.ca_file
        if access.proxy:
            self._options["proxies"] = {"http": access.proxy, "https": access.proxy}

    def _call(self, method, path, media=None, body=None, params=None, shape=dict, read_timeout=None, signed=True):
        headers = {"Accept": MEDIA.format(media) if media else "application/json"}
        if not signed:
            headers["Authorization"] = None  # requests leaves the session's header out
        if body is not None:
            headers["Content-Type"] = MEDIA.format(media) if media else "application/json"
        options = self._options
        if read_timeout is not None:
            options = {**options, "timeout": (options["timeout"], read_timeout)}
        try:
            response = self._session.request(method, self._base + path, json=body, params=params,
                                             headers=headers, **options)
        except requests.RequestException as exc:
            raise CloudUnreachable(f"cannot reach {self._base}: {_reason(exc)}") from None
        if response.status_code >= 400:
            raise CloudError(response.status_code, f"{method} {path} refused: {_error_message(response)}")
        if not response.content:
            return shape()
        try:
            answer = response.json()
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, shape):
            raise CloudUnreachable(f"{method} {path}: the answer is not a JSON {'object' if shape is dict else 'array'} "
                                   f"(HTTP {response.status_code}, {len(response.content)} bytes)")
        return answer

    def login_tenant(self):
        """The tenant id in the tenant's public login options (its OAuth initRequest names it), or None."""
        answer = self._call("GET", "/tenant/loginOptions", "loginoptioncollection", signed=False)
        options = answer.get("loginOptions")
        for option in options if isinstance(options, list) else []:
            request = option.get("initRequest") if isinstance(option, dict) else None
            tenant = parse_qs(urlsplit(request).query).get("tenant_id") if isinstance(request, str) else None
            if tenant:
                return tenant[0]
        return None

    def find_device(self, external_id):
        """The managed object id of a c8y_Serial, or None when it is not registered."""
        try:
            answer = self._call("GET", f"/identity/externalIds/c8y_Serial/{external_id}", "externalid")
        except CloudError as exc:
            if exc.status == 404:
                return None
            raise
        return _field(answer, "managedObject", "id")

    def create_device(self, external_id, fragments):
        mo_id = _field(self._call("POST", "/inventory/managedObjects", "managedobject", fragments), "id")
        self._call("POST", f"/identity/globalIds/{mo_id}/externalIds", "externalid",
                   {"type": "c8y_Serial", "externalId": external_id})
        return mo_id

    def device(self, mo_id):
        return self._call("GET", f"/inventory/managedObjects/{mo_id}", "managedobject")

    def update_device(self, mo_id, fragments):
        self._call("PUT", f"/inventory/managedObjects/{mo_id}", "managedobject", fragments)

    def device_credentials(self, external_id):
        """The device's own tenant, user and password, asked for with the bootstrap user; None (404)
        until an administrator has accepted the device in Device Management (docs/wire.md section 2)."""
        try:
            answer = self._call("POST", "/devicecontrol/deviceCredentials", "devicecredentials", {"id": external_id})
        except CloudError as exc:
            if exc.status == 404:
                return None
            raise
        return {"tenant": _field(answer, "tenantId"), "user": _field(answer, "username"),
                "password": _field(answer, "password")}

    def connect_operations(self, device_id, status, page_size=100):
        """The device's c8y_RemoteAccessConnect operations in a status, oldest first."""
        answer = self._call("GET", "/devicecontrol/operations", "operationcollection", params={
            "deviceId": device_id, "status": status, "fragmentType": CONNECT_FRAGMENT, "pageSize": page_size})
        operations = answer.get("operations")
        if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
            raise CloudUnreachable("the operation list has no list of operations in it")
        return operations

    def configurations(self, device_id):
        """The device's remote access configurations (docs/wire.md section 5)."""
        configs = self._call("GET", f"/service/remoteaccess/devices/{device_id}/configurations", shape=list)
        if not all(isinstance(c, dict) and "id" in c for c in configs):
            raise CloudUnreachable("the configuration list holds something that is not a configuration")
        return configs

    def notification(self, messages, read_timeout=None):
        """Bayeux messages to the operations' real-time notification endpoint, and its answer
        (docs/wire.md section 3); a held connect gets a `read_timeout` that outlasts its hold."""
        return self._call("POST", NOTIFICATIONS, body=messages, shape=list, read_timeout=read_timeout)

    def post_event(self, device_id, event_type, text, fragments):
        """An event on the device, stamped now (the platform requires source, type, text and time)."""
        body = {"source": {"id": str(device_id)}, "type": event_type, "text": text,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"), **fragments}
        self._call("POST", "/event/events", "event", body)

    def close(self):
        self._session.close()

    def set_status(self, operation_id, status, failure_reason=None):
        body = {"status": status}
        if failure_reason is not None:
            body["failureReason"] = failure_reason
        self._call("PUT", f"/devicecontrol/operations/{operation_id}", "operation", body)


def _field(answer, *path):
    value = answer
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise CloudUnreachable(f"the answer has no {'.'.join(path)}")
    return str(value)


def _error_message(response):
    """The platform's own message when the body is its error shape, else the HTTP reason."""
    try:
        body = response.json()
        message = body.get("message") or body.get("error")
    except (ValueError, AttributeError, RecursionError):
        message = None
    return str(message)[:300] if message else (response.reason or "no reason given")


def _reason(exc):
    """Why a request got no answer, in words rather than urllib3's nested repr."""
    if isinstance(exc, requests.exceptions.SSLError):
        return tls_failure(str(exc))
    if isinstance(exc, requests.exceptions.ProxyError):
        return "the proxy refused or failed (check [c8y] proxy)"
    if isinstance(exc, requests.exceptions.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        for cause, words in (("Connection refused", "connection refused"), ("Name or service not known", "host name not found"),
                             ("Temporary failure in name resolution", "host name not found"),
                             ("Connection reset", "connection reset"), ("Network is unreachable", "network unreachable"),
                             ("RemoteDisconnected", "the server closed the connection without an answer")):
            if cause in text:
                return words
        return "connection failed"
    return type(exc).__name__


def tls_failure(text):
    """Why TLS with the tenant failed, from the SSL error's text, and what to do."""
    if "WRONG_VERSION_NUMBER" in text:
        return "TLS failed: the server does not speak TLS (is its URL http:// rather than https://?)"
    verify = re.search(r"certificate verify failed: ([^(]+)|CertificateError\(['\"](.+?)['\"]\)", text)  # urllib3 2, 1.26
    why = (verify.group(1) or verify.group(2)).strip() if verify else ""
    if "match" in why:
        return (f"TLS verification failed: the server's certificate is for another host ({why}): "
                f"use the host name in the URL that the certificate was issued for")
    if verify:
        return (f"TLS verification failed: the server's certificate is not trusted ({why}): give the authority "
                f"that signed it as the CA file ([c8y] ca_file; cra-connect --ca-file)")
    return f"TLS failed ({text.strip() or 'no reason given'})"
