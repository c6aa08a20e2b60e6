"""Binary frames to the cloud, built here rather than by websocket-client: its pure-Python masking
took most of the agent's CPU on the way up (docs/BENCHMARKS.md). Masking is one big-integer
multiply and XOR here, a fresh random key each frame as RFC 6455 requires; with wsaccel installed
(Debian's python3-wsaccel), its C masker is used instead.
"""
import os
import struct

try:
    from wsaccel.xormask import XorMaskerSimple
except ImportError:
    XorMaskerSimple = None

FIN = 0x80
OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING = 0x2, 0x8, 0x9
MASKED = 0x80
CHUNK = 64 * 1024
# Little-endian 1, 0, 0, 0, 1, ...: times a key, the key repeated.
_REPEAT_CHUNK = int.from_bytes(b"\x01\x00\x00\x00" * (CHUNK // 4), "little")


def send_binary(ws, data):
    """What ws.send_binary(data) does, in one sendall under the socket's lock (the reader thread
    answers pings on the same socket)."""
    send(ws, OPCODE_BINARY, data)


def send(ws, opcode, data):
    """One frame in one sendall: unlike websocket-client's own sends, which wait for a socket that
    stays full with no timeout at all, this one fails when the socket's send timeout runs out."""
    message = frame(opcode, data, os.urandom(4))
    with ws.lock:
        ws.sock.sendall(message)


def frame(opcode, data, key):
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", FIN | opcode, MASKED | size)
    elif size < 65536:
        header = struct.pack("!BBH", FIN | opcode, MASKED | 126, size)
    else:
        header = struct.pack("!BBQ", FIN | opcode, MASKED | 127, size)
    return b"".join((header, key, mask(key, data)))


def mask(key, data):
    """data XOR the 4-byte key, repeated."""
    if XorMaskerSimple is not None:
        return XorMaskerSimple(key).process(data)
    size = len(data)
    whole = -(-size // 4) * 4  # the key repeats in whole words; the tail is cut off afterwards
    if whole <= CHUNK:
        repeat = _REPEAT_CHUNK >> (8 * (CHUNK - whole))  # whole words off the top: still aligned
    else:
        repeat = int.from_bytes(b"\x01\x00\x00\x00" * (whole // 4), "little")
    masked = (int.from_bytes(data, "little") ^ int.from_bytes(key, "little") * repeat).to_bytes(whole, "little")
    return masked if whole == size else masked[:size]
