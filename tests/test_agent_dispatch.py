"""The agent's handling of one operation, in process: whatever it meets ends that operation, not the agent."""
import logging

from cra.agent import Agent
from cra.config import load

CONFIG = """[c8y]
url = https://127.0.0.1:9
tenant = t100
user = device_gw-001
password = not-used
external_id = gw-001
"""


class RecordingPlatform:
    """What the agent asks of the platform, kept; nothing is sent anywhere."""

    def __init__(self):
        self.statuses = []

    def set_status(self, operation_id, status, failure_reason=None):
        self.statuses.append((operation_id, status, failure_reason))


def test_an_unexpected_exception_fails_its_operation_with_the_reason_and_a_debug_traceback(tmp_path, caplog):
    path = tmp_path / "agent.conf"
    path.write_text(CONFIG)
    agent = Agent(load(path, environ={}))
    agent.c8y = RecordingPlatform()

    def broken(op_id, operation):
        raise KeyError("surprise")

    agent._connect = broken
    with caplog.at_level(logging.DEBUG, logger="cra.agent"):
        agent._handle("4711", {"id": "4711"})
    assert agent.c8y.statuses == [("4711", "FAILED", "the agent could not handle the operation: KeyError: 'surprise'")]
    assert any(record.exc_info and record.levelno == logging.DEBUG for record in caplog.records)
    assert "4711" not in agent._tunnels
