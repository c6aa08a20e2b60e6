"""What every REST handler needs: bodies in, media types out, ids, paging and self links."""
import json

from aiohttp import web

from cra.cloud.errors import ApiError, not_found, unprocessable

MEDIA_PREFIX = "application/vnd.com.nsn.cumulocity."
MAX_PAGE_SIZE = 2000
DEFAULT_PAGE_SIZE = 5


def media_type(name):
    return f"{MEDIA_PREFIX}{name}+json;charset=UTF-8;ver=0.9"


def respond(body, media=None, status=200):
    content_type = media_type(media) if media else "application/json"
    return web.Response(status=status, body=json.dumps(body).encode(), headers={"Content-Type": content_type})


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


async def read_json(request):
    """The JSON value in the body, null when it is empty; 400 when it is not JSON (NaN and Infinity are not JSON either)."""
    raw = await request.read()
    try:
        return json.loads(raw or b"null", parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "general/Bad Request", "The request body is not valid JSON.") from None


async def read_object(request):
    """The JSON object in the body; 400 when it is not one."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "general/Bad Request", "The request body must be a JSON object.")
    return body


def base_url(request):
    return f"{request.scheme}://{request.host}"


def whole_number(raw):
    """The int that a string of ASCII digits names, or None; ids and page numbers fit in sqlite's 64 bits."""
    text = str(raw)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def path_id(request, name, domain, what):
    """A numeric id from the path; anything else names nothing, so 404."""
    raw = request.match_info[name]
    if whole_number(raw) is None:
        raise not_found(domain, f"{what} with id {raw} not found")
    return int(raw)


def required_string(body, key, domain):
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise unprocessable(domain, f'"{key}" must be a non-empty string')
    return value


def page(request, domain):
    """(offset, page size, current page) from pageSize and currentPage, validated."""
    numbers = []
    for key, default, ceiling in (("pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), ("currentPage", 1, None)):
        raw = request.query.get(key, str(default))
        if not whole_number(raw):
            raise unprocessable(domain, f"{key} must be a positive whole number, not {raw!r}")
        numbers.append(min(int(raw), ceiling) if ceiling else int(raw))
    size, current = numbers
    return (current - 1) * size, size, current


def collection(request, key, items, size, current, total):
    """The platform's collection envelope: always a next link (a client reads until a page is empty)."""
    url = request.url
    body = {"self": str(url.update_query(currentPage=current, pageSize=size)),
            "next": str(url.update_query(currentPage=current + 1, pageSize=size)), key: items,
            "statistics": {"currentPage": current, "pageSize": size}}
    if current > 1:
        body["prev"] = str(url.update_query(currentPage=current - 1, pageSize=size))
    if request.query.get("withTotalPages") == "true":
        body["statistics"]["totalPages"] = -(-total // size)
    if request.query.get("withTotalElements") == "true":
        body["statistics"]["totalElements"] = total
    return body
