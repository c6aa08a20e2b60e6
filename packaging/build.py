"""Builds the agent's packages: python3 packaging/build.py deb|ipk [--out DIR].

Both packages hold what a gateway runs and nothing else: the agent's modules (every cra/*.py
present, so a new module is picked up, but never cra-connect, a tool for the user's machine, nor
cra/cloud/) in a private directory, a launcher, the configuration and the init files. The .deb is
made by dpkg-deb; the .ipk as OpenWrt's ipkg-build makes it (a gzip'd tar of debian-binary,
data.tar.gz and control.tar.gz). File times are fixed (source_epoch) and owners are root, so the
same tree gives the same .ipk.
"""
import argparse
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from email.utils import formatdate
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
MAINTAINER = "cra-agent maintainers <maintainers@cra-agent.example>"
LEFT_OUT = {"connect.py"}  # cra-connect runs on the user's machine, not on the gateway


def version():
    return re.search(r'__version__ = "([^"]+)"', (TOP / "cra" / "__init__.py").read_text()).group(1)


def source_epoch():
    """SOURCE_DATE_EPOCH, else the last commit's time, else (outside git) cra/__init__.py's."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        last_commit = subprocess.run(["git", "-C", str(TOP), "log", "-1", "--format=%ct"],
                                     capture_output=True, text=True).stdout.strip()
    except OSError:  # no git
        last_commit = ""
    return int(last_commit) if last_commit else int((TOP / "cra" / "__init__.py").stat().st_mtime)


def agent_files():
    """{installed path: (content, mode)} that both packages share."""
    files = {f"usr/share/cra-agent/cra/{module.name}": (module.read_bytes(), 0o644)
             for module in sorted((TOP / "cra").glob("*.py")) if module.name not in LEFT_OUT}
    files["usr/bin/cra-agent"] = ((HERE / "cra-agent").read_bytes(), 0o755)
    files["etc/cra-agent/cra-agent.conf"] = ((TOP / "etc" / "cra-agent.conf").read_bytes(), 0o600)
    return files


def control(kind, **fields):
    return (HERE / kind / "control").read_text().format(version=version(), maintainer=MAINTAINER, **fields).encode()


def build_deb(out, epoch):
    files = agent_files()
    files.update({
        "etc/init.d/cra-agent": ((TOP / "init.d" / "cra-agent").read_bytes(), 0o755),
        "etc/default/cra-agent": ((HERE / "deb" / "default").read_bytes(), 0o600),
        "lib/systemd/system/cra-agent.service": ((TOP / "init.d" / "cra-agent.service").read_bytes(), 0o644),
        "usr/share/doc/cra-agent/copyright": ((HERE / "deb" / "copyright").read_bytes(), 0o644),
        "usr/share/doc/cra-agent/changelog.gz": (gzip.compress(changelog(epoch), 9, mtime=0), 0o644),
        "usr/share/man/man8/cra-agent.8.gz": (gzip.compress((HERE / "cra-agent.8").read_bytes(), 9, mtime=0), 0o644),
        "usr/share/lintian/overrides/cra-agent": ((HERE / "deb" / "lintian-overrides").read_bytes(), 0o644),
    })
    installed_kib = sum((len(content) + 1023) // 1024 for content, _ in files.values())
    metadata = {
        "control": (control("deb", installed_size=installed_kib), 0o644),
        "conffiles": ("".join(f"/{path}\n" for path in sorted(files) if path.startswith("etc/")).encode(), 0o644),
        "md5sums": ("".join(f"{hashlib.md5(content).hexdigest()}  {path}\n"
                            for path, (content, _) in sorted(files.items()) if not path.startswith("etc/")).encode(), 0o644),
        **{script: ((HERE / "deb" / script).read_bytes(), 0o755) for script in ("postinst", "prerm", "postrm")},
    }
    files.update({f"DEBIAN/{name}": entry for name, entry in metadata.items()})
    target = out / f"cra-agent_{version()}_all.deb"
    with tempfile.TemporaryDirectory() as tree:
        write_tree(Path(tree), files, epoch)
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, str(target)], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    return target


def changelog(epoch):
    return (f"cra-agent ({version()}) unstable; urgency=medium\n\n"
            f"  * Built from the cra-agent source tree; see its git history.\n\n"
            f" -- {MAINTAINER}  {formatdate(epoch)}\n").encode()


def write_tree(root, files, epoch):
    """The files under root, with their modes; every file and directory dated `epoch`."""
    for path, (content, mode) in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    for directory, _, names in os.walk(root):
        os.chmod(directory, 0o755)
        for name in names + ["."]:
            os.utime(os.path.join(directory, name), (epoch, epoch))


def build_ipk(out, epoch):
    files = agent_files()
    files.update({
        "etc/init.d/cra-agent": ((TOP / "init.d" / "cra-agent.openwrt").read_bytes(), 0o755),
        "etc/config/cra-agent": ((TOP / "init.d" / "cra-agent.uci").read_bytes(), 0o600),
        "lib/upgrade/keep.d/cra-agent": ((HERE / "openwrt" / "cra-agent" / "files" / "cra-agent.keep").read_bytes(), 0o644),
    })
    data = tar_gz(with_directories(files), epoch)
    metadata = {
        "control": (control("ipk", installed_size=len(gzip.decompress(data)), epoch=epoch), 0o644),
        "conffiles": (b"/etc/config/cra-agent\n/etc/cra-agent/cra-agent.conf\n", 0o644),
        **{script: ((HERE / "ipk" / script).read_bytes(), 0o755) for script in ("postinst", "prerm")},
    }
    target = out / f"cra-agent_{version()}_all.ipk"
    target.write_bytes(tar_gz({"debian-binary": (b"2.0\n", 0o644), "data.tar.gz": (data, 0o644),
                               "control.tar.gz": (tar_gz(with_directories(metadata), epoch), 0o644)}, epoch))
    return target


def with_directories(files):
    """files and every directory above them, sorted, as tar lists a tree ("." first); a directory's content is None."""
    directories = {str(parent) for path in files for parent in Path(path).parents}
    return {name: files.get(name, (None, 0o755)) for name in sorted(directories | set(files))}


def tar_gz(members, epoch):
    """A gzip'd tar as ipkg-build makes it: {name: (content, mode)} in that order, each name ./-relative,
    owned by root and dated `epoch`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, (content, mode) in members.items():
            info = tarfile.TarInfo("./" if name == "." else f"./{name}" + ("/" if content is None else ""))
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, epoch, 0, 0, "root", "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), 9, mtime=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the cra-agent .deb or .ipk.")
    parser.add_argument("kind", choices=["deb", "ipk"])
    parser.add_argument("--out", type=Path, default=TOP / "dist", help="where the package goes (default dist/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    build = build_deb if args.kind == "deb" else build_ipk
    print(build(args.out, source_epoch()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
