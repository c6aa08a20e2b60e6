"""The agent's own binary frames (cra/frames.py) are byte for byte what websocket-client would
send with the same key, at every length where the header or the masking changes shape; the
tunnel tests show the cloud reading them."""
import os
import threading

import pytest
from websocket import ABNF

from cra import frames


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 65537, 200003])
@pytest.mark.parametrize("masker", ["python", "wsaccel when installed"])
def test_a_frame_is_what_websocket_client_would_send(size, masker, monkeypatch):
    if masker == "python":
        monkeypatch.setattr(frames, "XorMaskerSimple", None)
    data, key = os.urandom(size), os.urandom(4)
    reference = ABNF.create_frame(data, ABNF.OPCODE_BINARY)
    reference.get_mask_key = lambda _: key
    assert frames.frame(frames.OPCODE_BINARY, data, key) == reference.format()


@pytest.mark.parametrize("opcode, payload", [(ABNF.OPCODE_PING, b""), (ABNF.OPCODE_CLOSE, b"\x03\xe9going away")])
def test_control_frames_are_what_websocket_client_would_send(opcode, payload):
    key = os.urandom(4)
    reference = ABNF.create_frame(payload, opcode)
    reference.get_mask_key = lambda _: key
    assert frames.frame(opcode, payload, key) == reference.format()


def test_each_frame_has_a_fresh_key():
    """RFC 6455 wants the masking key unpredictable: the same data twice is sent differently."""
    sent = []

    class Socket:
        sendall = sent.append

    class Ws:
        lock, sock = threading.Lock(), Socket()

    frames.send_binary(Ws, b"same")
    frames.send_binary(Ws, b"same")
    assert sent[0][2:6] != sent[1][2:6] and sent[0] != sent[1]
