"""The seed file: tenants, users, bootstrap users, devices and their configurations, applied at
every start without duplicating anything, so tests and `make run` need no clicking."""
import json

from cra.cloud import configurations
from cra.cloud.auth import hash_password, verify_password
from cra.cloud.errors import ApiError


class SeedError(ValueError):
    pass


def load(path):
    """The seed's tenants, validated, or SeedError saying where the file is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise SeedError(f"cannot read seed file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SeedError(f"seed file {path} is not valid JSON: {exc}") from None
    tenants = data if isinstance(data, list) else [data]
    for index, tenant in enumerate(tenants):
        _check_tenant(tenant, f"{path}: tenant [{index}]")
    return tenants


def _check_tenant(tenant, where):
    _expect(isinstance(tenant, dict), where, "must be an object")
    _string(tenant, "tenant", where)
    for index, user in enumerate(_list(tenant, "users", where)):
        at = f"{where} users[{index}]"
        _expect(isinstance(user, dict), at, "must be an object")
        _string(user, "user", at)
        _string(user, "password", at)
        roles = user.get("roles", [])
        _expect(isinstance(roles, list) and all(isinstance(r, str) for r in roles), at, '"roles" must be a list of strings')
        if "device" in user:
            _string(user, "device", at)
    if "bootstrap" in tenant:
        _expect(isinstance(tenant["bootstrap"], dict), f"{where} bootstrap", "must be an object")
        _string(tenant["bootstrap"], "user", f"{where} bootstrap")
        _string(tenant["bootstrap"], "password", f"{where} bootstrap")
    for index, device in enumerate(_list(tenant, "devices", where)):
        at = f"{where} devices[{index}]"
        _expect(isinstance(device, dict), at, "must be an object")
        _string(device, "externalId", at)
        for key in ("name", "type"):
            if key in device:
                _string(device, key, at)
        for number, config in enumerate(_list(device, "configurations", at)):
            try:
                configurations.validated(config if isinstance(config, dict) else {})
            except ApiError as exc:
                raise SeedError(f"{at} configurations[{number}]: {exc.message}") from None


def _expect(condition, where, what):
    if not condition:
        raise SeedError(f"{where}: {what}")


def _string(obj, key, where):
    _expect(isinstance(obj.get(key), str) and obj[key].strip(), where, f'"{key}" must be a non-empty string')


def _list(obj, key, where):
    value = obj.get(key, [])
    _expect(isinstance(value, list), where, f'"{key}" must be a list')
    return value


def apply(store, vault, tenants):
    for seed in tenants:
        with store.transaction():
            _apply_tenant(store, vault, seed)


def _apply_tenant(store, vault, seed):
    tenant = seed["tenant"]
    device_owners = {}
    for user in seed.get("users", []):
        current = store.user(tenant, user["user"])
        if current is None or not verify_password(current["password_hash"], user["password"]) \
                or current["roles"] != frozenset(user.get("roles", [])) or current["is_device"] != ("device" in user):
            store.put_user(tenant, user["user"], hash_password(user["password"]), user.get("roles", []), "device" in user)
        if "device" in user:
            device_owners[user["device"]] = user["user"]
    if "bootstrap" in seed:
        store.put_bootstrap_user(tenant, seed["bootstrap"]["user"], hash_password(seed["bootstrap"]["password"]))
    for device in seed.get("devices", []):
        serial = device["externalId"]
        mo_id = store.external_id(tenant, "c8y_Serial", serial)
        if mo_id is None:
            fragments = {"name": device.get("name", serial), "c8y_IsDevice": {}}
            if "type" in device:
                fragments["type"] = device["type"]
            mo_id = int(store.create_managed_object(tenant, device_owners.get(serial, ""), fragments)["id"])
            store.add_external_id(tenant, "c8y_Serial", serial, mo_id)
        existing = {c["name"]: c for c in store.configurations(tenant, mo_id)}
        for config in device.get("configurations", []):
            configurations.save(store, vault, tenant, mo_id, config, existing.get(config["name"]))
