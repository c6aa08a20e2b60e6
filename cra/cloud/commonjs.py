"""One browser script from CommonJS modules on disk, for a library Debian ships only as Node modules.

Debian bookworm's libjs-xterm 3.8.1 installs /usr/share/javascript/xterm/xterm.js as a wrapper whose
body still calls require("./public/Terminal"): no browser can run it. node-xterm, from the same
source package, installs the compiled modules (/usr/share/nodejs/xterm/lib). `bundle` joins the
modules that some entry modules reach, each in a function of its own, behind a require() that knows
where each relative name leads, and sets one global per entry. No build tool; nothing is copied into
this tree.
"""
import json
import posixpath
import re
from pathlib import Path

REQUIRE = re.compile(r"""\brequire\(\s*["']([^"']+)["']\s*\)""")
SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.M)  # the maps are not served: no request for them

RUNTIME = """(function () {
  var modules = {%s};
  var loaded = {};
  function load(name) {
    if (!loaded[name]) {
      var module = loaded[name] = {exports: {}};
      var links = modules[name][1];
      modules[name][0].call(module.exports, function (wanted) { return load(links[wanted]); }, module, module.exports);
    }
    return loaded[name].exports;
  }
%s})();
"""


class BundleError(Exception):
    pass


def bundle(root, entries):
    """The script text: `entries` maps a global's name to the module (a path under `root`) it is set to."""
    root = Path(root)
    sources, pending = {}, list(entries.values())
    while pending:
        name = pending.pop()
        if name in sources:
            continue
        try:
            text = SOURCE_MAP.sub("", (root / name).read_text(encoding="utf-8"))
        except OSError as exc:
            raise BundleError(f"cannot read {root / name}: {exc.strerror}") from None
        links = {wanted: _resolve(root, name, wanted) for wanted in REQUIRE.findall(text)}
        sources[name] = (text, links)
        pending += links.values()
    table = ",\n".join(f"{json.dumps(name)}: [function (require, module, exports) {{\n{text}\n}}, {json.dumps(links)}]"
                       for name, (text, links) in sorted(sources.items()))
    exports = "".join(f"  window[{json.dumps(g)}] = load({json.dumps(m)});\n" for g, m in entries.items())
    return RUNTIME % (table, exports)


def _resolve(root, importer, wanted):
    """Node's rules for a relative name: the file, the file with .js, or the directory's index.js."""
    if not wanted.startswith("."):
        raise BundleError(f"{importer} requires {wanted!r}, a package; only modules under {root} can be joined")
    base = posixpath.normpath(posixpath.join(posixpath.dirname(importer), wanted))
    for candidate in (base, base + ".js", posixpath.join(base, "index.js")):
        if (root / candidate).is_file():
            return candidate
    raise BundleError(f"{importer} requires {wanted!r}, which is not under {root}")
