"""Signing in as the platform's own clients do: the login options a tenant advertises (public, and
how a client such as c8ylp learns its tenant id from the URL), OAI-Secure tokens, and who is signed in."""
from aiohttp import web

from cra.cloud.auth import unauthorized
from cra.cloud.errors import ApiError
from cra.cloud.rest import base_url, respond

routes = web.RouteTableDef()


def domain_tenant(request):
    """The tenant whose domain this is: the one tenant_id names, or else the first; a real tenant has a domain
    of its own, this cloud serves all of its tenants on one."""
    tenants = request.app["store"].tenants()
    named = request.query.get("tenant_id")
    return named if named in tenants else (tenants[0] if tenants else "")


@routes.get("/tenant/loginOptions")
async def login_options(request):
    base, tenant = base_url(request), domain_tenant(request)
    internal = {"id": "OAUTH2_INTERNAL", "type": "OAUTH2_INTERNAL", "provider": "Cumulocity",
                "userManagementSource": "INTERNAL", "visibleOnLoginPage": True, "grantType": "PASSWORD",
                "initRequest": f"{base}/tenant/oauth?tenant_id={tenant}", "self": f"{base}/tenant/loginOptions/OAUTH2_INTERNAL"}
    basic = {"id": "BASIC", "type": "BASIC", "provider": "Cumulocity", "userManagementSource": "INTERNAL",
             "visibleOnLoginPage": False, "self": f"{base}/tenant/loginOptions/BASIC"}
    return respond({"self": f"{base}/tenant/loginOptions", "loginOptions": [internal, basic]}, "loginoptioncollection")


@routes.get("/user/currentUser")
async def current_user(request):
    principal, base = request["principal"], base_url(request)
    roles = [{"id": role, "name": role, "self": f"{base}/user/roles/{role}"} for role in sorted(principal.roles)]
    return respond({"id": principal.user, "userName": principal.user, "self": f"{base}/user/currentUser",
                    "enabled": True, "shouldResetPassword": False, "effectiveRoles": roles}, "currentuser")


@routes.get("/tenant/currentTenant")
async def current_tenant(request):
    base = base_url(request)
    return respond({"name": request["principal"].tenant, "domainName": request.url.host, "allowCreateTenants": False,
                    "customProperties": {}, "self": f"{base}/tenant/currentTenant"}, "currenttenant")


async def password_login(request):
    """The principal of an OAuth password grant: form username (tenant/user or bare), password, tenant_id."""
    form = await request.post()
    if form.get("grant_type", "PASSWORD").upper() != "PASSWORD":
        raise ApiError(400, "security/Bad Request", "only grant_type=PASSWORD is supported")
    username, password = form.get("username", ""), form.get("password", "")
    tenant, _, user = username.rpartition("/")
    tenant = tenant or form.get("tenant_id") or request.query.get("tenant_id")
    if not user or not password:
        raise unauthorized("username and password are required")
    return request.app["auth"].login(tenant, user, password)


@routes.post("/tenant/oauth/token")
async def oauth_token(request):
    token, _ = request.app["auth"].issue_token(await password_login(request))
    return respond({"access_token": token})


@routes.post("/tenant/oauth")
async def oauth_cookie(request):
    token, claims = request.app["auth"].issue_token(await password_login(request))
    response = web.Response(status=200)
    response.set_cookie("authorization", token, httponly=True, path="/", samesite="Lax", secure=request.secure)
    response.set_cookie("XSRF-TOKEN", claims["xsrfToken"], path="/", samesite="Lax", secure=request.secure)
    return response
