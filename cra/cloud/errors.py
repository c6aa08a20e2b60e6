"""Cumulocity's error body, and the middleware that gives every 4xx/5xx one."""
import json
import logging
import re

from aiohttp import web

log = logging.getLogger("cra.cloud")

ERROR_MEDIA_TYPE = "application/vnd.com.nsn.cumulocity.error+json;charset=UTF-8;ver=0.9"
INFO_URL = "https://cumulocity.com/guides/reference/rest-implementation"
DEVICE_ENDPOINT_KEY = re.compile(r"(/service/remoteaccess/device/)([^/?]*)")


def masked(secret):
    """Enough of a connection key to match log lines, not enough to use it."""
    return secret[:4] + "..."


def loggable_path(path):
    """A request path fit for a log: the connection key in a device endpoint masked."""
    return DEVICE_ENDPOINT_KEY.sub(lambda m: m.group(1) + masked(m.group(2)), path)


class ApiError(Exception):
    """An answer that is an error: status, the platform's "<domain>/<kind>" and a sentence."""

    def __init__(self, status, error, message, headers=None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}


def not_found(domain, message):
    return ApiError(404, f"{domain}/Not Found", message)


def forbidden(message="Access is denied"):
    return ApiError(403, "security/Forbidden", message)


def unprocessable(domain, message):
    return ApiError(422, f"{domain}/Unprocessable Entity", message)


def error_response(status, error, message, headers=None):
    body = json.dumps({"error": error, "message": message, "info": INFO_URL})
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": ERROR_MEDIA_TYPE, **(headers or {})})


@web.middleware
async def error_middleware(request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.message, _x_basic(request, exc.headers))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"general/{exc.reason}", _sentence(exc))
    except ConnectionResetError:  # the client went away in the middle of its request: nobody to answer
        log.info("%s %s: the client went away before its request was whole", request.method, loggable_path(request.path))
        return error_response(400, "general/Bad Request", "The request did not arrive whole.")
    except Exception:
        log.exception("internal error on %s %s", request.method, loggable_path(request.path))
        return error_response(500, "general/Internal Server Error", "The server failed to handle the request.")


def _x_basic(request, headers):
    """A browser answers a 401 with `WWW-Authenticate: Basic` by opening its own password dialog, over
    the page; the platform's web clients send `UseXBasic: true` and get a scheme no browser knows."""
    challenge = headers.get("WWW-Authenticate", "")
    if challenge.startswith("Basic ") and request.headers.get("UseXBasic", "").lower() == "true":
        return {**headers, "WWW-Authenticate": "X" + challenge}
    return headers


def _sentence(exc):
    if exc.status == 413:
        return "The request body is larger than the server accepts."
    if exc.status == 405:
        return f"Method {exc.method} is not supported here."
    if exc.status == 404:
        return "There is no resource at this path."
    return exc.reason
