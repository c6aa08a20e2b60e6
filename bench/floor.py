"""The floor for a Python relay: the agent's design (blocking sockets, two threads per connection
with small stacks, 64 KiB reads, sendall) with no WebSocket and no cloud, so what a Python tunnel
costs beyond this is framing, masking and the cloud's leg.

    python -m bench.floor --target PORT [--tls CERT KEY]

prints "listening on PORT" and relays every connection to 127.0.0.1:TARGET until killed. With
--tls the accepted side speaks TLS: the one encrypted leg an agent has, for the wss figures.
"""
import argparse
import socket
import ssl
import threading

CHUNK = 64 * 1024
THREAD_STACK = 256 * 1024  # as cra-agent sets it


def pump(source, sink):
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):  # either end ending ends both, as a tunnel does
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay(conn, target, context):
    try:
        if context:
            conn = context.wrap_socket(conn, server_side=True)
        upstream = socket.create_connection(("127.0.0.1", target))
    except OSError:
        conn.close()
        return
    for sock in (conn, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    other = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
    other.start()
    pump(conn, upstream)
    other.join()
    conn.close()
    upstream.close()


def main():
    parser = argparse.ArgumentParser(prog="bench.floor")
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
    threading.stack_size(THREAD_STACK)
    server = socket.create_server(("127.0.0.1", 0), backlog=512)
    print(f"listening on {server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=relay, args=(conn, args.target, context), daemon=True).start()


if __name__ == "__main__":
    main()
