"""The aiohttp application: REST and WebSocket on one port, errors shaped like the platform's."""
from aiohttp import web

from cra.cloud import configurations, devicecontrol, inventory, tenant
from cra.cloud.auth import Authenticator
from cra.cloud.errors import error_middleware
from cra.cloud.notifications import Notifications
from cra.cloud.relay import Relay

MAX_BODY = 1024 * 1024


def make_app(store, vault, operation_timeout, idle_timeout, notification_hold, with_notifications):
    """Without notifications, operations are still published, to no one: POST /notification/operations is a 404,
    as on a tenant or behind a proxy that lacks the endpoint."""
    auth = Authenticator(store)
    relay = Relay(store, operation_timeout, idle_timeout)
    notifications = Notifications(store, notification_hold)
    app = web.Application(middlewares=[error_middleware, auth.middleware], client_max_size=MAX_BODY)
    app["store"], app["vault"], app["auth"], app["relay"] = store, vault, auth, relay
    app["notifications"] = notifications
    for module in (inventory, devicecontrol, tenant, configurations):
        app.add_routes(module.routes)
    app.add_routes(relay.routes())
    if with_notifications:
        app.add_routes(notifications.routes())
    return app
