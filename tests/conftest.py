import pytest

from support import Cloud


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
