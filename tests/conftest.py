from contextlib import contextmanager

import pytest

from cra.cloud.demo_targets import LocalSshd
from toolkit.platform import Users
from toolkit.programs import AgentProcess, Cloud
from toolkit.servers import LocalServer


@pytest.fixture
def cloud(tmp_path):
    """A running cra-cloud with the default seed (tenants t100 and t200); stopped after the test."""
    instance = Cloud(tmp_path).start()
    yield instance
    instance.stop()


@contextmanager
def programs(program_class, tmp_path):
    """A function that starts a program_class(tmp_path, ...) and returns it; all stopped afterwards."""
    started = []

    def start(*args, **kwargs):
        started.append(program_class(tmp_path, *args, **kwargs).start())
        return started[-1]

    yield start
    for program in started:
        program.stop()


@pytest.fixture
def make_cloud(tmp_path):
    """Start a cra-cloud with other flags, seed or environment: make_cloud(args=[...], seed=..., env=...)."""
    with programs(Cloud, tmp_path) as start:
        yield start


@pytest.fixture
def make_agent(tmp_path):
    """Start the real agent against a cloud: make_agent(cloud, options={"agent": {...}}, env=..., name=...)."""
    with programs(AgentProcess, tmp_path) as start:
        yield start


@pytest.fixture
def users():
    """Users' tools connected through the cloud (toolkit.platform.Users); all closed after the test."""
    opened = Users()
    yield opened
    opened.close()


@pytest.fixture
def serve():
    """serve(handler) -> a LocalServer on 127.0.0.1; closed, with its threads joined, after the test."""
    servers = []

    def make(handler):
        servers.append(LocalServer(handler))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1, run as this user with keys of its own (LocalSshd.client_options())."""
    server = LocalSshd(str(tmp_path)).start()
    yield server
    server.stop()
