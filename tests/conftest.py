import pytest

from agent_peers import Users
from support import AgentProcess, Cloud


@pytest.fixture
def cloud(tmp_path):
    """A running cra-cloud with the default seed (tenants t100 and t200); stopped after the test."""
    instance = Cloud(tmp_path).start()
    yield instance
    instance.stop()


@pytest.fixture
def make_cloud(tmp_path):
    """Start a cra-cloud with other flags, seed or environment: make_cloud(args=[...], seed=..., env=...)."""
    started = []

    def make(**kwargs):
        instance = Cloud(tmp_path, **kwargs).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()


@pytest.fixture
def make_agent(tmp_path):
    """Start the real agent against a cloud: make_agent(cloud, options={"agent": {...}}, env=..., name=...)."""
    started = []

    def make(cloud, **kwargs):
        agent = AgentProcess(tmp_path, cloud, **kwargs).start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


@pytest.fixture
def users():
    """Users' tools connected through the cloud (agent_peers.Users); all closed after the test."""
    opened = Users()
    yield opened
    opened.close()
