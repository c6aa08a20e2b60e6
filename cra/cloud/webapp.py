"""The platform's remote access in the browser (docs/cloud.md, "The web page"): the pages under
/apps/remote-access/, their scripts (package data, cra/cloud/web/), and the two JavaScript libraries
they use, served from Debian's packages where they are installed: noVNC for VNC, xterm.js for Telnet
and SSH terminals. The pages are public, like the platform's own login page; everything they show
comes from the REST API and the client endpoint, with the signed-in user's cookie.
"""
from pathlib import Path

from aiohttp import web

from cra.cloud.commonjs import BundleError, bundle
from cra.cloud.errors import not_found

BASE = "/apps/remote-access"
PAGES = Path(__file__).with_name("web")
DEFAULT_NOVNC_DIR = "/usr/share/novnc"
DEFAULT_XTERM_DIR = "/usr/share/nodejs/xterm"
# The pages are served from here and talk to this cloud only: nothing else is loaded or connected to.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class Libraries:
    """Where noVNC (Debian: novnc, core/rfb.js) and xterm.js (Debian: node-xterm, lib/xterm.js) are."""

    def __init__(self, novnc_dir=DEFAULT_NOVNC_DIR, xterm_dir=DEFAULT_XTERM_DIR):
        self.novnc = Path(novnc_dir)
        self.xterm = Path(xterm_dir)
        self._xterm_script = None

    def status(self):
        """What the session page needs to know: each library, whether it is there, what to install if not."""
        return {"novnc": self._entry(self.novnc / "core" / "rfb.js", "novnc"),
                "xterm": self._entry(self.xterm / "lib" / "xterm.js", "node-xterm")}

    @staticmethod
    def _entry(path, package):
        found = path.is_file()
        return {"available": found, "path": str(path),
                "problem": "" if found else f"{path} is missing: install Debian's package {package} "
                                            f"(apt-get install {package}), or point cra-cloud at a copy with its flag"}

    def xterm_script(self):
        """xterm.js 3.8.1 and its fit addon as one script (cra/cloud/commonjs.py says why), made once."""
        if self._xterm_script is None:
            self._xterm_script = bundle(self.xterm / "lib", {"Terminal": "xterm.js", "TerminalFit": "addons/fit/fit.js"})
        return self._xterm_script


def routes(libraries):
    async def library_status(request):
        return web.json_response(libraries.status(), headers=SECURITY_HEADERS)

    async def novnc_file(request):
        return _file_under(libraries.novnc, request.match_info["path"], "novnc")

    async def xterm_script(request):
        try:
            script = libraries.xterm_script()
        except BundleError as exc:
            raise not_found("apps", f"{exc}: install Debian's package node-xterm") from None
        return web.Response(text=script, content_type="text/javascript", headers=SECURITY_HEADERS)

    async def page_file(request):
        return _file_under(PAGES, request.match_info["path"], "cra-agent")

    async def xterm_css(request):
        return _file_under(libraries.xterm / "lib", "xterm.css", "node-xterm")

    return [
        web.get(BASE, _redirect_to_index),
        web.get(BASE + "/", _page("index.html")),
        web.get(BASE + "/devices/{deviceId}/configurations/{configId}", _page("session.html")),
        web.get(BASE + "/libraries", library_status),
        web.get(BASE + "/static/{path:.+}", page_file),
        web.get(BASE + "/novnc/{path:.+}", novnc_file),
        web.get(BASE + "/xterm/xterm.js", xterm_script),
        web.get(BASE + "/xterm/xterm.css", xterm_css),
    ]


async def _redirect_to_index(request):
    raise web.HTTPFound(BASE + "/")


def _page(name):
    async def page(request):
        return _file_under(PAGES, name, "cra-agent")
    return page


def _file_under(root, relative, package):
    """A file inside `root`, never outside it (no `..`, no symlink out); 404 naming the package otherwise."""
    root = root.resolve()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        raise not_found("apps", f"{relative} is not in {root} (Debian's package {package})")
    return web.FileResponse(path, headers=SECURITY_HEADERS)
