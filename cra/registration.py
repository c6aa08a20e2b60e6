"""The device in the inventory (docs/wire.md section 2): found by its c8y_Serial or created, and made to
offer remote access. What it already lists is merged, never dropped: other agents on the same
device may support other operations.
"""
import logging

from cra.c8y import CONNECT_FRAGMENT

log = logging.getLogger("cra.agent")

PROTOCOLS = ["PASSTHROUGH", "SSH", "VNC", "TELNET"]


def register(c8y, config):
    """The device's managed object id, after creating or updating it as needed."""
    device_id = c8y.find_device(config.external_id)
    if device_id is None:
        device_id = c8y.create_device(config.external_id, {
            "name": config.device_name or config.external_id, "type": config.device_type,
            "c8y_IsDevice": {}, "com_cumulocity_model_Agent": {},
            "c8y_SupportedOperations": [CONNECT_FRAGMENT], "c8y_RemoteAccessSupportedProtocols": PROTOCOLS})
        log.info("registered new device %s as managed object %s", config.external_id, device_id)
        return device_id
    changes = _missing(c8y.device(device_id))
    if changes:
        c8y.update_device(device_id, changes)
    log.info("device %s is managed object %s%s", config.external_id, device_id,
             f"; updated {', '.join(sorted(changes))}" if changes else "")
    return device_id


def _missing(device):
    """The fragments to PUT so that an existing device offers remote access."""
    supported = device.get("c8y_SupportedOperations")
    supported = supported if isinstance(supported, list) else []
    changes = {}
    if CONNECT_FRAGMENT not in supported:
        changes["c8y_SupportedOperations"] = supported + [CONNECT_FRAGMENT]
    if device.get("c8y_RemoteAccessSupportedProtocols") != PROTOCOLS:
        changes["c8y_RemoteAccessSupportedProtocols"] = PROTOCOLS
    if "com_cumulocity_model_Agent" not in device:
        changes["com_cumulocity_model_Agent"] = {}
    return changes
