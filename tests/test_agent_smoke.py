import socket
import threading

from support import ADMIN, wait_for_status


def test_a_tunnel_carries_bytes_to_a_local_server_and_back(cloud, make_agent):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_once():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"banner\n")
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo_once, daemon=True).start()
    make_agent(cloud)
    device_id = cloud.device_id()
    config = cloud.api(ADMIN).post(f"/service/remoteaccess/devices/{device_id}/configurations",
                                   json={"name": "echo", "hostname": "127.0.0.1", "port": port}).json()
    client = cloud.open_client(device_id, config["id"])
    assert client.recv() == b"banner\n"
    client.send_binary(b"hello")
    assert client.recv() == b"hello"
    ops = cloud.api(ADMIN).get("/devicecontrol/operations", params={"deviceId": device_id, "pageSize": 100}).json()["operations"]
    assert wait_for_status(cloud, ops[-1]["id"])["status"] == "SUCCESSFUL"
    client.close()
    server.close()
