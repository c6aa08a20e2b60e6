"""cra-cloud's command line: flags, logging, the listening socket, and a clean stop on SIGTERM/SIGINT."""
import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import ssl
import sys

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cra import __version__
from cra.cloud import seed, webapp
from cra.cloud.app import make_app
from cra.cloud.configurations import warn_unreadable_secrets
from cra.cloud.errors import loggable_path
from cra.cloud.notifications import DEFAULT_HOLD, MAX_HOLD
from cra.cloud.store import Store
from cra.cloud.vault import Vault, VaultError

log = logging.getLogger("cra.cloud")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cra-cloud", description="A local stand-in for the Cumulocity side of Cloud Remote Access.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8111, help="port to listen on; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--db", default=":memory:", help="sqlite file that keeps the state across restarts (default: %(default)s, lost at exit)")
    parser.add_argument("--seed", metavar="FILE.json", help="tenants, users, devices and configurations to create at start (idempotent)")
    parser.add_argument("--operation-timeout", type=_positive, default=30.0, metavar="SECONDS",
                        help="how long a client waits for its device, unless the tenant option remoteaccess.operation.timeout says otherwise (default: %(default)g)")
    parser.add_argument("--idle-timeout", type=_positive, default=3600.0, metavar="SECONDS",
                        help="close a session after this long without data (default: %(default)g, as remoteaccess.ws.idle.timeout)")
    parser.add_argument("--notification-hold", type=_hold, default=DEFAULT_HOLD, metavar="SECONDS",
                        help="hold a /meta/connect on /notification/operations this long when no operation comes "
                             f"(default: %(default)g, the platform's; at most {MAX_HOLD:g})")
    parser.add_argument("--without-notifications", action="store_true",
                        help="answer POST /notification/operations with 404, as a tenant or proxy without it does")
    parser.add_argument("--unsubscribed-tenant", action="append", default=[], metavar="TENANT",
                        help="answer every /service/remoteaccess request of this tenant with 404, as a tenant "
                             "not subscribed to Cloud Remote Access does (repeatable)")
    parser.add_argument("--certfile", metavar="PEM", help="serve https and wss with this certificate (chain); needs --keyfile")
    parser.add_argument("--keyfile", metavar="PEM", help="the private key of --certfile")
    parser.add_argument("--encryption-password", default=os.environ.get("CRA_CLOUD_ENCRYPTION_PASSWORD"),
                        help="seal configuration secrets at rest (or CRA_CLOUD_ENCRYPTION_PASSWORD)")
    parser.add_argument("--encryption-salt", default=os.environ.get("CRA_CLOUD_ENCRYPTION_SALT"),
                        help="hex salt for the encryption key (or CRA_CLOUD_ENCRYPTION_SALT)")
    parser.add_argument("--novnc-dir", default=webapp.DEFAULT_NOVNC_DIR, metavar="DIR",
                        help="noVNC for the web page's VNC sessions, with core/rfb.js (default: %(default)s, Debian's novnc)")
    parser.add_argument("--xterm-dir", default=webapp.DEFAULT_XTERM_DIR, metavar="DIR",
                        help="xterm.js's Node modules for the web page's terminals, with lib/xterm.js "
                             "(default: %(default)s, Debian's node-xterm)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _hold(text):
    value = _positive(text)
    if value > MAX_HOLD:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_HOLD:g} seconds (the platform's largest timeout), not {text!r}")
    return value


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        tls = tls_context(args.certfile, args.keyfile)
        vault = Vault(args.encryption_password, args.encryption_salt)
        tenants = seed.load(args.seed) if args.seed else []
        store = Store(args.db)
    except (TlsError, VaultError, seed.SeedError) as exc:
        print(f"cra-cloud: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"cra-cloud: cannot open the database {args.db}: {exc}", file=sys.stderr)
        return 2
    try:
        seed.apply(store, vault, tenants)
        warn_unreadable_secrets(store, vault)
        return asyncio.run(serve(args, store, vault, tls))
    finally:
        store.close()


class TlsError(Exception):
    pass


def tls_context(certfile, keyfile):
    """The server's TLS context, None for plain http; TlsError when the files cannot serve."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise TlsError("--certfile and --keyfile go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:  # an OSError too, so first
        raise TlsError(f"cannot serve TLS with {certfile} and {keyfile}: they are not a PEM certificate and "
                       f"its private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise TlsError(f"cannot read {exc.filename or certfile}: {exc.strerror}") from None
    return context


async def serve(args, store, vault, tls):
    app = make_app(store, vault, args.operation_timeout, args.idle_timeout, args.notification_hold,
                   not args.without_notifications, set(args.unsubscribed_tenant),
                   webapp.Libraries(args.novnc_dir, args.xterm_dir))
    runner = web.AppRunner(app, access_log=log if args.verbose else None, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        print(f"cra-cloud: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before the line that tells a supervisor it may signal
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    host, port = runner.addresses[0][:2]
    print(f"cra-cloud {__version__} listening on {'https' if tls else 'http'}://{_url_host(host)}:{port} "
          f"(state in {args.db}, secrets {'sealed' if vault.encrypting else 'not encrypted'})", flush=True)
    await stop.wait()
    log.info("stopping: closing sessions")
    await site.stop()
    app["notifications"].shutdown()
    await app["relay"].shutdown()
    await runner.cleanup()
    return 0


class AccessLogger(AbstractAccessLogger):
    """aiohttp's request line, but with connection keys masked."""

    def log(self, request, response, time):
        self.logger.info("%s %s %s %s %.3f s", request.remote, request.method, loggable_path(request.path_qs),
                         response.status, time)


def _url_host(host):
    return f"[{host}]" if ":" in host else host
