"""Remote access configurations (docs/wire.md section 5), mirrored into the device's c8y_RemoteAccessList.

Secrets (password, privateKey) go into the vault and never come back out through the API.
The target's SSH host key is public: `credentials.hostKey`, one OpenSSH line ("ssh-ed25519 AAAA..."),
as the platform's c8y_RemoteAccessList shows it; cra-cloud's SSH client checks it, and saves the first
one it meets when the tenant allows (cra/cloud/ssh_terminal.py).
"""
import logging

from aiohttp import web

from cra.cloud.auth import require_remote_access_admin
from cra.cloud.errors import not_found, unprocessable
from cra.cloud.inventory import visible_managed_object
from cra.cloud.rest import base_url, path_id, read_object, respond
from cra.cloud.vault import VaultError

log = logging.getLogger("cra.cloud")
routes = web.RouteTableDef()

PROTOCOLS = ("PASSTHROUGH", "SSH", "VNC", "TELNET")
CREDENTIALS_TYPES = ("NONE", "USER_PASS", "PASS_ONLY", "KEY_PAIR", "CERTIFICATE")
PUBLIC_CREDENTIALS = ("username", "publicKey", "hostKey", "certificate")
CREDENTIAL_ALIASES = {"hostkey": "hostKey"}  # taken as the platform spells it
SECRET_CREDENTIALS = ("password", "privateKey")


def validated(body):
    """The stored form of a configuration body: (public fields, secrets) or 422 naming the field."""
    name, hostname, port = body.get("name"), body.get("hostname"), body.get("port")
    if not isinstance(name, str) or not name.strip():
        raise unprocessable("remoteaccess", '"name" must be a non-empty string')
    if not isinstance(hostname, str) or not hostname.strip():
        raise unprocessable("remoteaccess", '"hostname" must be a non-empty string')
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise unprocessable("remoteaccess", f'"port" must be a number from 1 to 65535, not {port!r}')
    protocol = body.get("protocol", "PASSTHROUGH")
    if protocol not in PROTOCOLS:
        raise unprocessable("remoteaccess", f'"protocol" must be one of {", ".join(PROTOCOLS)}, not {protocol!r}')
    credentials_type = body.get("credentialsType", "NONE")
    if credentials_type not in CREDENTIALS_TYPES:
        raise unprocessable("remoteaccess", f'"credentialsType" must be one of {", ".join(CREDENTIALS_TYPES)}')
    credentials = body.get("credentials") or {}
    if not isinstance(credentials, dict):
        raise unprocessable("remoteaccess", '"credentials" must be an object')
    credentials = {CREDENTIAL_ALIASES.get(k, k): v for k, v in credentials.items()}
    for key, value in credentials.items():
        if key not in PUBLIC_CREDENTIALS + SECRET_CREDENTIALS:
            raise unprocessable("remoteaccess", f'unknown credentials field {key!r}')
        if not isinstance(value, str):
            raise unprocessable("remoteaccess", f'credentials field {key!r} must be a string')
    public = {"name": name, "hostname": hostname, "port": port, "protocol": protocol, "credentialsType": credentials_type,
              "credentials": {k: v for k, v in credentials.items() if k in PUBLIC_CREDENTIALS}}
    return public, {k: v for k, v in credentials.items() if k in SECRET_CREDENTIALS}


def save(store, vault, tenant, device_id, body, existing=None):
    """Create or replace a configuration and mirror the device's list, in the caller's transaction.

    Secrets given replace the stored ones; none given keeps them.
    """
    public, secrets = validated(body)
    sealed = vault.seal(secrets) if secrets else (existing or {}).get("sealed_secrets")
    if public["credentialsType"] == "NONE":
        sealed = None
    if existing is None:
        config = store.create_configuration(tenant, device_id, public, sealed)
    else:
        config = store.update_configuration(tenant, device_id, int(existing["id"]), public, sealed)
    mirror(store, tenant, device_id)
    return config


def save_host_key(store, vault, tenant, device_id, config_id, host_key):
    """Keep the host key an SSH session met first in its configuration, unless the configuration is gone or
    has got one meanwhile; whether it was saved."""
    with store.transaction():
        existing = store.configuration(tenant, device_id, int(config_id))
        if existing is None or (existing.get("credentials") or {}).get("hostKey"):
            return False
        body = public(existing)
        body["credentials"] = {**existing["credentials"], "hostKey": host_key}
        save(store, vault, tenant, device_id, body, existing)
    return True


def mirror(store, tenant, device_id):
    store.update_managed_object(tenant, device_id, {"c8y_RemoteAccessList": [public(c) for c in store.configurations(tenant, device_id)]})


def public(config):
    return {k: v for k, v in config.items() if k not in ("sealed_secrets", "deviceId")}


def warn_unreadable_secrets(store, vault):
    """At start: say which stored secrets this cloud's encryption password cannot open."""
    for tenant in store.tenants():
        for config in store.configurations(tenant):
            if config["sealed_secrets"]:
                try:
                    vault.open(config["sealed_secrets"])
                except VaultError as exc:
                    log.warning("credentials of configuration %s (%s) on device %s in tenant %s cannot be read: %s; "
                                "provide them again", config["id"], config["name"], config["deviceId"], tenant, exc)


def render(request, device_id, config):
    return {"self": f"{base_url(request)}/service/remoteaccess/devices/{device_id}/configurations/{config['id']}", **public(config)}


def admin_device(request):
    """The device named in the path, for a remote access admin of its tenant."""
    require_remote_access_admin(request["principal"])
    return int(visible_managed_object(request, path_id(request, "deviceId", "inventory", "Device"))["id"])


def known_configuration(request, device_id):
    config_id = path_id(request, "configId", "remoteaccess", "Configuration")
    config = request.app["store"].configuration(request["principal"].tenant, device_id, config_id)
    if config is None:
        raise not_found("remoteaccess", f"Configuration {config_id} not found on device {device_id}")
    return config


@routes.get("/service/remoteaccess/health")
async def health(request):
    return respond({"status": "UP"})


@routes.get("/service/remoteaccess/devices/{deviceId}/configurations")
async def list_configurations(request):
    device_id = admin_device(request)
    configs = request.app["store"].configurations(request["principal"].tenant, device_id)
    return respond([render(request, device_id, c) for c in configs])


@routes.post("/service/remoteaccess/devices/{deviceId}/configurations")
async def create_configuration(request):
    device_id, store, body = admin_device(request), request.app["store"], await read_object(request)
    with store.transaction():
        config = save(store, request.app["vault"], request["principal"].tenant, device_id, body)
    log.info("configuration %s (%s) created on device %s", config["id"], config["name"], device_id)
    return respond(render(request, device_id, config), status=201)


@routes.get("/service/remoteaccess/devices/{deviceId}/configurations/{configId}")
async def get_configuration(request):
    device_id = admin_device(request)
    return respond(render(request, device_id, known_configuration(request, device_id)))


@routes.put("/service/remoteaccess/devices/{deviceId}/configurations/{configId}")
async def update_configuration(request):
    device_id = admin_device(request)
    existing = known_configuration(request, device_id)
    given = await read_object(request)
    body = {**public(existing), **given}
    if isinstance(given.get("credentials"), dict):
        body["credentials"] = {**existing["credentials"], **given["credentials"]}
    store = request.app["store"]
    with store.transaction():
        config = save(store, request.app["vault"], request["principal"].tenant, device_id, body, existing)
    return respond(render(request, device_id, config))


@routes.delete("/service/remoteaccess/devices/{deviceId}/configurations/{configId}")
async def delete_configuration(request):
    device_id = admin_device(request)
    config, store, tenant = known_configuration(request, device_id), request.app["store"], request["principal"].tenant
    with store.transaction():
        store.delete_configuration(tenant, device_id, int(config["id"]))
        mirror(store, tenant, device_id)
    return web.Response(status=204)
