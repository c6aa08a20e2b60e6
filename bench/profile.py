"""Where a device side spends its CPU: the profiles behind docs/BENCHMARKS.md, to check a change with.

    python -m bench.profile tunnel [--side cra-agent] [--wss] [--seconds 4]
        one bulk window each way through the usual chain, with py-spy recording the device side
        (--gil: only the thread that runs Python, so waiting in poll() or recv() does not count)
        and cra-cloud; prints the heaviest functions and the device side's user/system CPU per GiB,
        and leaves the folded stacks (for speedscope or flamegraph.pl) in build/bench/profile/.
    python -m bench.profile frames
        cProfile of websocket-client's per-frame work as the agent's pumps call it (send_binary,
        recv_data_frame), 64 KiB and 1-byte frames over a socketpair: no threads, no cloud.
"""
import argparse
import collections
import cProfile
import io
import os
import pstats
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import websocket

from bench.rig import DEVICES, ROOT, Cloud, WebSocketSide
from bench.traffic import Target, open_tunnels, ping_pong, stream

OUT = ROOT / "build/bench/profile"
PY_SPY = Path(sys.executable).parent / "py-spy"


def tunnel(side_name, tls, seconds):
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cra-profile-"))
    target = Target()
    cloud = Cloud(workdir, target.port)
    side = None
    try:
        side = WebSocketSide(side_name, workdir, cloud, tls, 0.2, 20)
        ping_pong(side.connect, 1, 1, 5)
        device = psutil.Process(side.programs[0].proc.pid)
        for direction in ("up", "down"):
            tunnels = open_tunnels(side.connect, b"S" if direction == "up" else b"D", 1)
            stem = OUT / f"{side_name.replace(' ', '')}-{'wss' if tls else 'ws'}-{direction}"
            spies = [_record(device.pid, f"{stem}.txt", ["--gil"], seconds), _record(cloud.program.proc.pid, f"{stem}-cloud.txt", [], seconds)]
            moved, window, before, after = stream(tunnels, target, direction, 0.3, seconds + 0.5,
                                                  lambda: device.cpu_times()._asdict())
            for spy in spies:
                spy.wait()
            gib = moved[0] / 2**30
            print(f"\n{side_name} {'wss' if tls else 'ws'} {direction}: {moved[0] / window / 1e6:.0f} MB/s, CPU per GiB: "
                  f"user {(after['user'] - before['user']) / gib:.2f} s, system {(after['system'] - before['system']) / gib:.2f} s")
            for label, path in ((side_name, f"{stem}.txt"), ("cra-cloud", f"{stem}-cloud.txt")):
                print(f"  {label}, heaviest functions (share of samples, self):")
                for share, frame in _heaviest(path):
                    print(f"    {share:5.1f} %  {frame}")
            target.wait_idle()
        print(f"\nfolded stacks in {OUT}")
    finally:
        if side:
            side.stop()
        cloud.stop()
        target.close()


def _record(pid, path, options, seconds):
    """py-spy on a running process, without pausing it to sample, folded stacks into `path`."""
    return subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--rate", "250", "--duration", str(seconds),
                             "--nonblocking", "--format", "raw", "--output", path, *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _heaviest(path, count=8):
    samples, total = collections.Counter(), 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        samples[stack.split(";")[-1]] += int(n)
        total += int(n)
    return [(100 * n / total, frame) for frame, n in samples.most_common(count)]


def frames():
    for size, count in ((64 * 1024, 2000), (1, 20000)):
        data = os.urandom(size)
        ws, peer = _connected()
        threading.Thread(target=_drain, args=(peer,), daemon=True).start()
        _profile(f"send_binary, {size} B", lambda: [ws.send_binary(data) for _ in range(count)], count)
        ws, peer = _connected()
        length = bytes([127]) + struct.pack("!Q", size) if size > 125 else bytes([size])
        threading.Thread(target=peer.sendall, args=((b"\x82" + length + data) * count,), daemon=True).start()
        _profile(f"recv_data_frame, {size} B", lambda: [ws.recv_data_frame(True) for _ in range(count)], count)


def _drain(sock):
    while sock.recv(1 << 20):
        pass


def _connected():
    """A websocket-client WebSocket, as the agent opens it, on one end of a socketpair."""
    mine, peer = socket.socketpair()
    ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
    ws.sock, ws.connected = mine, True
    return ws, peer


def _profile(label, work, count):
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(work)
    elapsed = time.perf_counter() - start
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
    print(f"\n== {label}: {elapsed / count * 1e6:.1f} us per frame (under cProfile)")
    print("\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip()))


def main():
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("tunnel")
    one.add_argument("--side", choices=list(DEVICES), default="cra-agent")
    one.add_argument("--wss", action="store_true")
    one.add_argument("--seconds", type=int, default=4)
    commands.add_parser("frames")
    args = parser.parse_args()
    if args.command == "tunnel":
        tunnel(args.side, args.wss, args.seconds)
    else:
        frames()


if __name__ == "__main__":
    main()
