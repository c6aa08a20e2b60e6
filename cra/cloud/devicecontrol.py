"""Device control: operations (docs/wire.md section 3) and device credentials with new device requests."""
import secrets

from aiohttp import web

from cra.cloud.auth import hash_password, require_user
from cra.cloud.errors import ApiError, forbidden, not_found, unprocessable
from cra.cloud.inventory import visible_ids, visible_managed_object
from cra.cloud.rest import base_url, collection, page, path_id, read_object, required_string, respond, whole_number

routes = web.RouteTableDef()

STATUSES = ("PENDING", "EXECUTING", "SUCCESSFUL", "FAILED")
LEGAL_MOVES = {"PENDING": {"EXECUTING", "FAILED"}, "EXECUTING": {"SUCCESSFUL", "FAILED"}}


def render_operation(request, op):
    return {"self": f"{base_url(request)}/devicecontrol/operations/{op['id']}", **op}


def visible_operation(request, op_id):
    principal, store = request["principal"], request.app["store"]
    op = store.operation(principal.tenant, op_id)
    if op is None:
        raise not_found("devicecontrol", f"Finding operation data from database failed : No operation for id '{op_id}'!")
    if principal.is_device and store.managed_object(principal.tenant, int(op["deviceId"]))["owner"] != principal.user:
        raise forbidden(f"Access is denied: operation {op_id} is for another device")
    return op


def status_filter(request):
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise unprocessable("devicecontrol", f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return status


@routes.get("/devicecontrol/operations")
async def list_operations(request):
    offset, size, current = page(request, "devicecontrol")
    query = request.query
    operations, total = request.app["store"].operations(
        request["principal"].tenant, visible_ids(request, "deviceId", "agentId"), status_filter(request),
        query.get("fragmentType"), offset, size, newest_first=query.get("revert") == "true")
    items = [render_operation(request, op) for op in operations]
    return respond(collection(request, "operations", items, size, current, total), "operationCollection")


@routes.get("/devicecontrol/operations/{id}")
async def get_operation(request):
    op = visible_operation(request, path_id(request, "id", "devicecontrol", "Operation"))
    return respond(render_operation(request, op), "operation")


@routes.post("/devicecontrol/operations")
async def create_operation(request):
    principal = request["principal"]
    require_user(principal)
    body = await read_object(request)
    device_id = whole_number(body["deviceId"]) if isinstance(body.get("deviceId"), (str, int)) else None
    if device_id is None:
        raise unprocessable("devicecontrol", '"deviceId" must be the id of a device')
    visible_managed_object_by_id(request, device_id)
    fragments = {k: v for k, v in body.items() if k not in ("deviceId", "status", "failureReason", "id", "self")}
    op = new_operation(request, principal.tenant, device_id, fragments)
    return respond(render_operation(request, op), "operation", 201)


def new_operation(request, tenant, device_id, fragments):
    """A new PENDING operation, announced to the device's notification clients; every operation is made here."""
    op = request.app["store"].create_operation(tenant, device_id, fragments)
    request.app["notifications"].publish(tenant, op)
    return op


def visible_managed_object_by_id(request, mo_id):
    try:
        return visible_managed_object(request, mo_id)
    except ApiError as exc:
        raise unprocessable("devicecontrol", f"device {mo_id} does not exist") if exc.status == 404 else exc


@routes.put("/devicecontrol/operations/{id}")
async def update_operation(request):
    principal, store = request["principal"], request.app["store"]
    op = visible_operation(request, path_id(request, "id", "devicecontrol", "Operation"))
    body = await read_object(request)
    status = body.get("status", op["status"])
    if status not in STATUSES:
        raise unprocessable("devicecontrol", f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if status != op["status"] and status not in LEGAL_MOVES.get(op["status"], ()):
        raise unprocessable("devicecontrol", f"an operation cannot move from {op['status']} to {status}")
    if "failureReason" in body:
        if status != "FAILED":
            raise unprocessable("devicecontrol", "failureReason is only allowed with status FAILED")
        if not isinstance(body["failureReason"], str):
            raise unprocessable("devicecontrol", '"failureReason" must be a string')
    fragments = {k: v for k, v in body.items() if k != "status"}
    updated = store.update_operation(principal.tenant, int(op["id"]), status, fragments)
    return respond(render_operation(request, updated), "operation")


def fail_operation(store, tenant, op_id, reason):
    """Set an operation FAILED if it is still open; the relay's word when a device never came."""
    op = store.operation(tenant, op_id)
    if op is not None and op["status"] in LEGAL_MOVES:
        store.update_operation(tenant, op_id, "FAILED", {"failureReason": reason})


# device credentials, for devices that register themselves


@routes.post("/devicecontrol/deviceCredentials")
async def device_credentials(request):
    principal, store = request["principal"], request.app["store"]
    if not principal.is_bootstrap:
        raise forbidden("Access is denied: device credentials are requested with the bootstrap user")
    serial = required_string(await read_object(request), "id", "devicecontrol")
    pending = store.device_request(principal.tenant, serial)
    if pending is None or pending["status"] != "ACCEPTED":
        if pending is not None and pending["status"] == "WAITING_FOR_CONNECTION":
            store.set_device_request_status(principal.tenant, serial, "PENDING_ACCEPTANCE")
        raise not_found("devicecontrol", f"There is no accepted new device request for id {serial}")
    username, password = f"device_{serial}", secrets.token_urlsafe(18)
    with store.transaction():
        store.put_user(principal.tenant, username, hash_password(password), is_device=True)
        store.delete_device_request(principal.tenant, serial)
    body = {"id": serial, "self": f"{base_url(request)}/devicecontrol/deviceCredentials/{serial}",
            "tenantId": principal.tenant, "username": username, "password": password}
    return respond(body, "deviceCredentials", 201)


def render_device_request(request, item):
    return {"self": f"{base_url(request)}/devicecontrol/newDeviceRequests/{item['id']}", **item}


def known_device_request(request):
    principal, store = request["principal"], request.app["store"]
    require_user(principal)
    item = store.device_request(principal.tenant, request.match_info["id"])
    if item is None:
        raise not_found("devicecontrol", f"New device request with id {request.match_info['id']} not found")
    return item


@routes.post("/devicecontrol/newDeviceRequests")
async def create_device_request(request):
    principal, store = request["principal"], request.app["store"]
    require_user(principal)
    serial = required_string(await read_object(request), "id", "devicecontrol")
    if not store.add_device_request(principal.tenant, serial):
        raise ApiError(409, "devicecontrol/Conflict", f"A new device request with id {serial} exists already")
    return respond(render_device_request(request, store.device_request(principal.tenant, serial)), "newDeviceRequest", 201)


@routes.get("/devicecontrol/newDeviceRequests")
async def list_device_requests(request):
    principal, store = request["principal"], request.app["store"]
    require_user(principal)
    offset, size, current = page(request, "devicecontrol")
    everything = store.device_requests(principal.tenant)
    items = [render_device_request(request, item) for item in everything[offset:offset + size]]
    return respond(collection(request, "newDeviceRequests", items, size, current, len(everything)), "newDeviceRequestCollection")


@routes.get("/devicecontrol/newDeviceRequests/{id}")
async def get_device_request(request):
    return respond(render_device_request(request, known_device_request(request)), "newDeviceRequest")


@routes.put("/devicecontrol/newDeviceRequests/{id}")
async def accept_device_request(request):
    principal, store = request["principal"], request.app["store"]
    item = known_device_request(request)
    status = (await read_object(request)).get("status")
    if status != "ACCEPTED":
        raise unprocessable("devicecontrol", 'the only change to a new device request is {"status": "ACCEPTED"}')
    if item["status"] != "PENDING_ACCEPTANCE":
        raise unprocessable("devicecontrol", f"device {item['id']} has not asked for credentials yet ({item['status']})")
    store.set_device_request_status(principal.tenant, item["id"], "ACCEPTED")
    return respond(render_device_request(request, store.device_request(principal.tenant, item["id"])), "newDeviceRequest")


@routes.delete("/devicecontrol/newDeviceRequests/{id}")
async def delete_device_request(request):
    principal, store = request["principal"], request.app["store"]
    store.delete_device_request(principal.tenant, known_device_request(request)["id"])
    return web.Response(status=204)
