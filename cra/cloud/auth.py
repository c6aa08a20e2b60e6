"""Who is asking: Basic `tenant/user:password`, Bearer tokens the cloud issued, or the cookie pair.

Passwords are kept as salted PBKDF2 hashes; a verified password is remembered by its digest so
that an agent polling every few seconds does not pay the key stretching each time.
"""
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from cra.cloud.errors import ApiError, forbidden

REMOTE_ACCESS_ADMIN = "ROLE_REMOTE_ACCESS_ADMIN"
BOOTSTRAP_TENANT = "management"
TOKEN_LIFETIME = 14 * 24 * 3600
PBKDF2_ROUNDS = 50_000
PUBLIC_ROUTES = {("HEAD", "/service/remoteaccess/health"), ("GET", "/service/remoteaccess/health"),
                 ("POST", "/tenant/oauth"), ("POST", "/tenant/oauth/token"), ("GET", "/tenant/loginOptions")}
# Web applications' pages and scripts, public as the platform's login page is; their data needs a user.
PUBLIC_PREFIX = "/apps/"


@dataclass(frozen=True)
class Principal:
    tenant: str
    user: str
    roles: frozenset = frozenset()
    is_device: bool = False
    is_bootstrap: bool = False


def hash_password(password):
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS)
    return f"pbkdf2-sha256${PBKDF2_ROUNDS}${salt.hex()}${digest.hex()}"


def verify_password(stored_hash, password):
    _, rounds, salt, digest = stored_hash.split("$")
    computed = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
    return hmac.compare_digest(computed.hex(), digest)


def unauthorized(message="Invalid credentials! : Bad credentials"):
    return ApiError(401, "security/Unauthorized", message, {"WWW-Authenticate": 'Basic realm="Cumulocity"'})


class Authenticator:
    def __init__(self, store):
        self._store = store
        self._signing_key = store.secret("token-signing-key")
        self._verified = set()

    def password_matches(self, stored_hash, password):
        memo = (stored_hash, hashlib.sha256(password.encode()).digest())
        if memo in self._verified:
            return True
        if not verify_password(stored_hash, password):
            return False
        self._verified.add(memo)
        return True

    def login(self, tenant, user, password):
        """The principal for a tenant's user and password, or 401; no tenant means the only one."""
        tenant = tenant or self._only_tenant()
        record = self._store.user(tenant, user) if tenant else None
        if record is None or not self.password_matches(record["password_hash"], password):
            raise unauthorized()
        return Principal(tenant, user, record["roles"], record["is_device"])

    def basic(self, encoded):
        try:
            user_part, password = base64.b64decode(encoded, validate=True).decode().split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise unauthorized("Malformed Basic authorization header") from None
        tenant, _, user = user_part.rpartition("/")
        tenant = tenant or self._only_tenant()
        if tenant == BOOTSTRAP_TENANT or self._store.user(tenant, user) is None:
            bootstrap = self._bootstrap(tenant, user, password)
            if bootstrap:
                return bootstrap
        return self.login(tenant, user, password)

    def _only_tenant(self):
        """A bare user is accepted on a tenant's own domain; this cloud is that domain only when it has one tenant."""
        tenants = self._store.tenants()
        return tenants[0] if len(tenants) == 1 else None

    def _bootstrap(self, tenant, user, password):
        """Bootstrap users log in to the management tenant; each belongs to the tenant that seeded it."""
        for row in self._store.bootstrap_users(user):
            if tenant in (BOOTSTRAP_TENANT, row["tenant"]) and self.password_matches(row["password_hash"], password):
                return Principal(row["tenant"], user, is_bootstrap=True)
        return None

    def issue_token(self, principal):
        claims = {"sub": principal.user, "ten": principal.tenant, "iat": int(time.time()),
                  "exp": int(time.time()) + TOKEN_LIFETIME, "jti": secrets.token_hex(8),
                  "xsrfToken": secrets.token_urlsafe(16)}
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        signature = _b64url(hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}", claims

    def bearer(self, token):
        """The principal a token names, with the token's claims."""
        try:
            header, payload, signature = token.split(".")
            expected = _b64url(hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
            if not _same(expected, signature):
                raise ValueError("bad signature")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise unauthorized("Invalid token") from None
        if claims.get("exp", 0) < time.time():
            raise unauthorized("Token expired")
        record = self._store.user(claims.get("ten"), claims.get("sub"))
        if record is None:
            raise unauthorized("Invalid token")
        return Principal(record["tenant"], record["name"], record["roles"], record["is_device"]), claims

    def authenticate(self, request):
        """A browser's WebSocket cannot send headers: on an upgrade, the token may come as the query
        parameter `token`, and the cookie's XSRF token as `XSRF-TOKEN`, as the platform's web UI sends them."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            return self.basic(value.strip())
        if scheme.lower() == "bearer":
            return self.bearer(value.strip())[0]
        query = request.query if request.headers.get("Upgrade", "").lower() == "websocket" else {}
        if query.get("token"):
            return self.bearer(query["token"])[0]
        cookie = request.cookies.get("authorization")
        if cookie:
            principal, claims = self.bearer(cookie)
            xsrf = request.headers.get("X-XSRF-TOKEN") or query.get("XSRF-TOKEN", "")
            if not _same(xsrf, claims.get("xsrfToken", "")):
                raise unauthorized("Missing or wrong X-XSRF-TOKEN header for cookie authentication")
            return principal
        raise unauthorized("Full authentication is required to access this resource")

    @web.middleware
    async def middleware(self, request, handler):
        if (request.method, request.path) not in PUBLIC_ROUTES and not (
                request.method in ("GET", "HEAD") and request.path.startswith(PUBLIC_PREFIX)):
            principal = self.authenticate(request)
            if principal.is_bootstrap and (request.method, request.path) != ("POST", "/devicecontrol/deviceCredentials"):
                raise forbidden("The bootstrap user may only request device credentials")
            request["principal"] = principal
        return await handler(request)


def require_user(principal):
    """Administration (new devices, options, creating operations) is for people, not devices."""
    if principal.is_device or principal.is_bootstrap:
        raise forbidden("Access is denied: a device user may not do this")


def require_remote_access_admin(principal):
    if REMOTE_ACCESS_ADMIN not in principal.roles:
        raise forbidden(f"Access is denied: the user needs the role {REMOTE_ACCESS_ADMIN}")


def _same(given, expected):
    """Constant-time equality that also takes the non-ASCII text a client may send."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), str(expected).encode("utf-8", "replace"))


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
