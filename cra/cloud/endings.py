"""How a remote access session ends: who ended it, the close code the other side gets, and why in words.

Shared by the relay (cra/cloud/relay.py), which ends every session in one place, and by the SSH
terminal (cra/cloud/ssh_terminal.py), which reads the same WebSockets and must judge their frames alike.
"""
from dataclasses import dataclass

from aiohttp import WSMsgType

SENDABLE_CODES = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


@dataclass
class Ending:
    """How a session ended: who ended it, the close code the other side gets, and why in words."""
    by: str
    code: int
    reason: str
    abrupt: bool = False
    told: str = ""  # the close reason the other side gets, when not `reason`: the closing side's own


def ending_of(side, message):
    """The Ending a WebSocket message that is not data means: a close, a broken rule, a drop.
    A text frame is not judged here: what it means depends on the session."""
    if message.type is WSMsgType.CLOSE:
        code = message.data if message.data in SENDABLE_CODES else 1000
        said = f": {message.extra}" if message.extra else ""
        return Ending(side, code, f"the {side} closed ({message.data}{said})", told=message.extra or "")
    if message.type is WSMsgType.ERROR and getattr(message.data, "code", None) in SENDABLE_CODES:
        return Ending(side, message.data.code, f"the {side} broke the protocol: {message.data}")
    return Ending(side, 1006, f"the {side}'s connection dropped", abrupt=True)


def text_frame_ending(side):
    return Ending(side, 1003, f"the {side} sent a text frame; the tunnel carries binary frames only")
