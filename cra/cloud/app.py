"""The aiohttp application: REST and WebSocket on one port, errors shaped like the platform's."""
from aiohttp import web

from cra.cloud import configurations, devicecontrol, events, inventory, login, tenant, webapp
from cra.cloud.auth import Authenticator
from cra.cloud.errors import ApiError, error_middleware
from cra.cloud.notifications import Notifications
from cra.cloud.relay import Relay

MAX_BODY = 1024 * 1024
REMOTE_ACCESS_PATH = "/service/remoteaccess/"
REMOTE_ACCESS_APPLICATION = "cloud-remote-access"


def make_app(store, vault, operation_timeout, idle_timeout, notification_hold, with_notifications, unsubscribed=frozenset(),
             libraries=None):
    """Without notifications, operations are still published, to no one: POST /notification/operations is a 404,
    as on a tenant or behind a proxy that lacks the endpoint. The tenants in `unsubscribed` get 404 for every
    remote access request, as tenants that are not subscribed to the microservice do. `libraries`: where the
    web page's noVNC and xterm.js are (webapp.Libraries; Debian's paths when None)."""
    auth = Authenticator(store)
    relay = Relay(store, operation_timeout, idle_timeout)
    notifications = Notifications(store, notification_hold)
    app = web.Application(middlewares=[error_middleware, auth.middleware, subscription_middleware(unsubscribed)],
                          client_max_size=MAX_BODY)
    app["store"], app["vault"], app["auth"], app["relay"] = store, vault, auth, relay
    app["notifications"] = notifications
    for module in (inventory, devicecontrol, events, tenant, login, configurations):
        app.add_routes(module.routes)
    app.add_routes(relay.routes())
    app.add_routes(webapp.routes(libraries or webapp.Libraries()))
    if with_notifications:
        app.add_routes(notifications.routes())
    return app


def subscription_middleware(unsubscribed):
    @web.middleware
    async def middleware(request, handler):
        principal = request.get("principal")
        if principal and principal.tenant in unsubscribed and request.path.startswith(REMOTE_ACCESS_PATH):
            raise ApiError(404, "microservice/Not Found",
                           f"Microservice/application {REMOTE_ACCESS_APPLICATION} is not subscribed by tenant {principal.tenant}")
        return await handler(request)
    return middleware
