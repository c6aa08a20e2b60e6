"""Tenant options: remoteaccess.operation.timeout and hostkey-autosave, per tenant, taken without a restart."""
from aiohttp import web

from cra.cloud.auth import require_user
from cra.cloud.errors import not_found, unprocessable
from cra.cloud.rest import base_url, read_object, required_string, respond

routes = web.RouteTableDef()

REMOTE_ACCESS_CATEGORY = "remoteaccess"
OPERATION_TIMEOUT_KEY = "remoteaccess.operation.timeout"
HOSTKEY_AUTOSAVE_KEY = "hostkey-autosave"  # "true" unless set: an SSH configuration's first host key is saved


def positive_seconds(value):
    """The number in an option value, or None: the platform's values are strings, some clients send numbers."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < float("inf") and not isinstance(value, bool) else None


def operation_timeout(store, tenant, default):
    value = store.option(tenant, REMOTE_ACCESS_CATEGORY, OPERATION_TIMEOUT_KEY)
    return default if value is None else positive_seconds(value)


def hostkey_autosave(store, tenant):
    """Whether the tenant saves the first host key an SSH configuration meets (the platform's default: true)."""
    value = store.option(tenant, REMOTE_ACCESS_CATEGORY, HOSTKEY_AUTOSAVE_KEY)
    return True if value is None else value.strip().lower() == "true"


def option_value(category, key, value):
    if category == REMOTE_ACCESS_CATEGORY and key == HOSTKEY_AUTOSAVE_KEY and isinstance(value, bool):
        value = str(value).lower()  # JSON true from a client that does not quote it
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise unprocessable("options", '"value" must be a string or a number')
    if (category, key) == (REMOTE_ACCESS_CATEGORY, OPERATION_TIMEOUT_KEY) and positive_seconds(value) is None:
        raise unprocessable("options", f"{key} must be a positive number of seconds, not {value!r}")
    if (category, key) == (REMOTE_ACCESS_CATEGORY, HOSTKEY_AUTOSAVE_KEY) and str(value).strip().lower() not in ("true", "false"):
        raise unprocessable("options", f'{key} must be "true" or "false", not {value!r}')
    return str(value)


def render_option(request, category, key, value):
    return {"category": category, "key": key, "value": value,
            "self": f"{base_url(request)}/tenant/options/{category}/{key}"}


@routes.post("/tenant/options")
async def create_option(request):
    principal, store = request["principal"], request.app["store"]
    require_user(principal)
    body = await read_object(request)
    category, key = required_string(body, "category", "options"), required_string(body, "key", "options")
    value = option_value(category, key, body.get("value"))
    store.put_option(principal.tenant, category, key, value)
    return respond(render_option(request, category, key, value), "option", 201)


def existing_option(request):
    principal, store = request["principal"], request.app["store"]
    require_user(principal)
    category, key = request.match_info["category"], request.match_info["key"]
    value = store.option(principal.tenant, category, key)
    if value is None:
        raise not_found("options", f"Unable to find option by given key: {category}/{key}")
    return category, key, value


@routes.get("/tenant/options/{category}/{key}")
async def get_option(request):
    return respond(render_option(request, *existing_option(request)), "option")


@routes.put("/tenant/options/{category}/{key}")
async def update_option(request):
    principal, store = request["principal"], request.app["store"]
    category, key, _ = existing_option(request)
    value = option_value(category, key, (await read_object(request)).get("value"))
    store.put_option(principal.tenant, category, key, value)
    return respond(render_option(request, category, key, value), "option")


@routes.delete("/tenant/options/{category}/{key}")
async def delete_option(request):
    principal, store = request["principal"], request.app["store"]
    category, key, _ = existing_option(request)
    store.delete_option(principal.tenant, category, key)
    return web.Response(status=204)
