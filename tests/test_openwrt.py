"""The agent on OpenWrt: the .ipk as opkg takes it."""
import gzip
import io
import re
import tarfile

import pytest

from toolkit.packages import AGENT_MODULES, TOP, VERSION, build

IPK_DEPENDS = "python3-light, python3-requests, python3-websocket-client, python3-pyserial"


@pytest.fixture(scope="module")
def ipk(tmp_path_factory):
    return build("ipk", tmp_path_factory.mktemp("dist"))


def members(archive):
    """{name: (TarInfo, content)} of a gzip'd tar, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_the_ipk_is_as_opkg_expects_it(ipk):
    outer = members(ipk.read_bytes())
    assert list(outer) == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
    assert outer["./debian-binary"][1] == b"2.0\n"
    control_files = members(outer["./control.tar.gz"][1])
    fields = dict(re.findall(r"^([\w-]+): (.*)$", control_files["./control"][1].decode(), re.M))
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == ("cra-agent", VERSION, "all")
    assert fields["Depends"] == IPK_DEPENDS
    data_tar = outer["./data.tar.gz"][1]
    assert int(fields["Installed-Size"]) == len(gzip.decompress(data_tar))
    assert control_files["./conffiles"][1].decode().split() == ["/etc/config/cra-agent", "/etc/cra-agent/cra-agent.conf"]
    for script in ("./postinst", "./prerm"):
        assert b"default_" in control_files[script][1] and control_files[script][0].mode == 0o755

    data = members(data_tar)
    init, init_script = data["./etc/init.d/cra-agent"]
    assert (init_script, init.mode) == ((TOP / "init.d" / "cra-agent.openwrt").read_bytes(), 0o755)
    assert data["./etc/config/cra-agent"][1] == (TOP / "init.d" / "cra-agent.uci").read_bytes()
    assert data["./etc/cra-agent/cra-agent.conf"][1] == (TOP / "etc" / "cra-agent.conf").read_bytes()
    launcher, launcher_text = data["./usr/bin/cra-agent"]
    assert launcher_text.startswith(b"#!/usr/bin/python3\n") and launcher.mode == 0o755
    assert sorted(n.rsplit("/", 1)[1] for n in data if n.startswith("./usr/share/cra-agent/cra/") and n.endswith(".py")) == AGENT_MODULES
    assert not [n for n in data if "cloud" in n or "connect.py" in n]
    assert {(m.uid, m.gid) for m, _ in list(data.values()) + list(outer.values())} == {(0, 0)}


def test_the_ipk_is_the_same_when_built_again(ipk, tmp_path):
    assert build("ipk", tmp_path).read_bytes() == ipk.read_bytes()
