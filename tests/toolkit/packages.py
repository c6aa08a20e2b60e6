"""The agent's packages as the tests build and take them apart: the tree they come from, a build
as `make deb` / `make ipk` runs it, and the tools a check needs (skipped when missing)."""
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent.parent
AGENT_MODULES = sorted(p.name for p in (TOP / "cra").glob("*.py") if p.name != "connect.py")
VERSION = re.search(r'__version__ = "([^"]+)"', (TOP / "cra" / "__init__.py").read_text()).group(1)


def need(*tools):
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: `make test` installs them")


def run(*command, timeout=120, **options):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)


def build(kind, out, *options):
    """The package `kind` (deb or ipk) built from this tree into `out`; its path."""
    result = run(sys.executable, str(TOP / "packaging" / "build.py"), kind, "--out", str(out), *options)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def with_version(deb, version, out):
    """The .deb again as release `version` (its control file and the agent's own __version__): the
    next release, for an upgrade."""
    tree = out / "tree"
    assert run("dpkg-deb", "-R", str(deb), str(tree)).returncode == 0
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    init = tree / "usr" / "share" / "cra-agent" / "cra" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    md5sums = tree / "DEBIAN" / "md5sums"
    digest = hashlib.md5(init.read_bytes()).hexdigest()
    md5sums.write_text(re.sub(r"^\w+(  usr/share/cra-agent/cra/__init__\.py)$", rf"{digest}\1", md5sums.read_text(), flags=re.M))
    built = out / f"cra-agent_{version}_all.deb"
    result = run("dpkg-deb", "--root-owner-group", "--build", str(tree), str(built))
    assert result.returncode == 0, result.stderr
    return built
