"""Identity and inventory: how a device finds or creates itself (docs/wire.md section 2).

A device user sees the objects it owns; other users see all of their tenant.
"""
from aiohttp import web

from cra.cloud.auth import require_user
from cra.cloud.errors import ApiError, forbidden, not_found, unprocessable
from cra.cloud.rest import base_url, collection, page, path_id, read_object, required_string, respond, whole_number

routes = web.RouteTableDef()


def render_managed_object(request, mo):
    return {"self": f"{base_url(request)}/inventory/managedObjects/{mo['id']}", **mo}


def visible_managed_object(request, mo_id):
    """The object if this principal may see it: 404 outside the tenant, 403 for another device's."""
    principal = request["principal"]
    mo = request.app["store"].managed_object(principal.tenant, mo_id)
    if mo is None:
        raise not_found("inventory", f"Finding device data from database failed : No managedObject for id '{mo_id}'!")
    if principal.is_device and mo["owner"] != principal.user:
        raise forbidden(f"Access is denied: managed object {mo_id} belongs to another device")
    return mo


def visible_ids(request, *keys):
    """The managed object ids a list may show: those the first of `keys` present in the query names
    (none, when it is no id), narrowed for a device's own user to what it owns; None for all."""
    principal, store = request["principal"], request.app["store"]
    wanted = next((request.query[key] for key in keys if request.query.get(key)), None)
    ids = None if wanted is None else {whole_number(wanted)} - {None}
    if principal.is_device:
        owned = {int(mo["id"]) for mo in store.managed_objects(principal.tenant, principal.user)}
        ids = owned if ids is None else ids & owned
    return ids


def validate_fragments(body):
    for key in ("name", "type"):
        if key in body and body[key] is not None and not isinstance(body[key], str):
            raise unprocessable("inventory", f'"{key}" must be a string')
    operations = body.get("c8y_SupportedOperations")
    if operations is not None and not (isinstance(operations, list) and all(isinstance(o, str) for o in operations)):
        raise unprocessable("inventory", '"c8y_SupportedOperations" must be a list of strings')
    return body


@routes.get("/identity/externalIds/{type}/{value}")
async def get_external_id(request):
    principal, store = request["principal"], request.app["store"]
    type_, value = request.match_info["type"], request.match_info["value"]
    mo_id = store.external_id(principal.tenant, type_, value)
    if mo_id is None:
        raise not_found("identity", f"External id not found; external id = ID [type={type_}, value={value}]")
    return respond(render_external_id(request, type_, value, mo_id), "externalId")


def render_external_id(request, type_, value, mo_id):
    base = base_url(request)
    return {"externalId": value, "type": type_, "self": f"{base}/identity/externalIds/{type_}/{value}",
            "managedObject": {"id": str(mo_id), "self": f"{base}/inventory/managedObjects/{mo_id}"}}


@routes.post("/identity/globalIds/{id}/externalIds")
async def add_external_id(request):
    principal, store = request["principal"], request.app["store"]
    mo = visible_managed_object(request, path_id(request, "id", "inventory", "Managed object"))
    body = await read_object(request)
    type_, value = required_string(body, "type", "identity"), required_string(body, "externalId", "identity")
    if not store.add_external_id(principal.tenant, type_, value, int(mo["id"])):
        raise ApiError(409, "identity/Conflict", f"External id already exists; external id = ID [type={type_}, value={value}]")
    return respond(render_external_id(request, type_, value, mo["id"]), "externalId", 201)


@routes.get("/identity/globalIds/{id}/externalIds")
async def list_external_ids(request):
    principal, store = request["principal"], request.app["store"]
    mo = visible_managed_object(request, path_id(request, "id", "inventory", "Managed object"))
    ids = [render_external_id(request, t, v, mo["id"]) for t, v in store.external_ids_of(principal.tenant, int(mo["id"]))]
    return respond({"self": str(request.url), "externalIds": ids}, "externalIdCollection")


@routes.post("/inventory/managedObjects")
async def create_managed_object(request):
    principal, store = request["principal"], request.app["store"]
    body = validate_fragments(await read_object(request))
    fragments = {k: v for k, v in body.items() if v is not None}
    mo = store.create_managed_object(principal.tenant, principal.user, fragments)
    return respond(render_managed_object(request, mo), "managedObject", 201)


@routes.get("/inventory/managedObjects")
async def list_managed_objects(request):
    principal, store = request["principal"], request.app["store"]
    offset, size, current = page(request, "inventory")
    owner = principal.user if principal.is_device else None
    everything = store.managed_objects(principal.tenant, owner)
    items = [render_managed_object(request, mo) for mo in everything[offset:offset + size]]
    return respond(collection(request, "managedObjects", items, size, current, len(everything)), "managedObjectCollection")


@routes.get("/inventory/managedObjects/{id}")
async def get_managed_object(request):
    mo = visible_managed_object(request, path_id(request, "id", "inventory", "Managed object"))
    return respond(render_managed_object(request, mo), "managedObject")


@routes.put("/inventory/managedObjects/{id}")
async def update_managed_object(request):
    principal, store = request["principal"], request.app["store"]
    mo = visible_managed_object(request, path_id(request, "id", "inventory", "Managed object"))
    body = validate_fragments(await read_object(request))
    updated = store.update_managed_object(principal.tenant, int(mo["id"]), body)
    return respond(render_managed_object(request, updated), "managedObject")


@routes.delete("/inventory/managedObjects/{id}")
async def delete_managed_object(request):
    principal, store = request["principal"], request.app["store"]
    require_user(principal)
    mo = visible_managed_object(request, path_id(request, "id", "inventory", "Managed object"))
    with store.transaction():
        store.delete_managed_object(principal.tenant, int(mo["id"]))
    return web.Response(status=204)
