"""An agent's poll loop around a tunnel client that has none of its own, so that the official
DeviceProxy (c8y-device-proxy) and websocat take the same operations, at the same poll interval,
as cra-agent does.

Every poll lists the device's PENDING c8y_RemoteAccessConnect operations; each new one is set
EXECUTING, handed to the tunnel client with its hostname, port and connection key, and set
SUCCESSFUL once the client is under way (DeviceProxy: connected; websocat: started), or FAILED
with the error, in a thread of its own, as an agent would. DeviceProxy runs in this process; websocat runs one process per tunnel,
which this loop reaps.

    python -m bench.driver --kind deviceproxy|websocat --url URL --user T/U --password PW
                           --device-id ID --poll SECONDS [--ca-file PEM]
"""
import argparse
import base64
import os
import subprocess
import sys
import threading
import time

import requests

CHUNK = 64 * 1024  # DeviceProxy's read size: the same 64 KiB as cra-agent's (its default is 16 KiB)
WEBSOCAT = os.path.join(os.path.dirname(sys.executable), "websocat")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench.driver")
    parser.add_argument("--kind", choices=("deviceproxy", "websocat"), required=True)
    parser.add_argument("--url", required=True, help="the cloud's base URL, http:// or https://")
    parser.add_argument("--user", required=True, help="tenant/user of the device")
    parser.add_argument("--password", required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--poll", type=float, required=True, help="seconds between polls")
    parser.add_argument("--ca-file", help="PEM to trust for https")
    return parser.parse_args(argv)


class Driver:
    def __init__(self, args):
        self.args = args
        self.session = requests.Session()
        self.session.auth = (args.user, args.password)
        self.session.headers["Accept"] = "application/json"
        self.authorization = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
        self.children = []
        if args.kind == "deviceproxy" and args.ca_file:
            # DeviceProxy trusts certifi's bundle and nothing else (sslopt ca_certs=certifi.where());
            # the bench's own CA must stand in for it.
            import certifi
            certifi.where = lambda: args.ca_file

    def run(self):
        seen = set()
        while True:
            try:
                operations = self._call("GET", "/devicecontrol/operations", params={
                    "deviceId": self.args.device_id, "status": "PENDING",
                    "fragmentType": "c8y_RemoteAccessConnect", "pageSize": 200})["operations"]
            except requests.RequestException as exc:
                print(f"poll failed: {exc}", file=sys.stderr, flush=True)
                operations = []
            for operation in operations:
                if operation["id"] not in seen:
                    seen.add(operation["id"])
                    threading.Thread(target=self.handle, args=(operation,), daemon=True).start()
            self.children = [child for child in self.children if child.poll() is None]
            time.sleep(self.args.poll)

    def handle(self, operation):
        op_id, connect = operation["id"], operation["c8y_RemoteAccessConnect"]
        try:
            self._status(op_id, "EXECUTING")
            if self.args.kind == "deviceproxy":
                self._deviceproxy(connect)
            else:
                self._websocat(connect)
            self._status(op_id, "SUCCESSFUL")
        except Exception as exc:  # whatever the client raised: the operation must not stay EXECUTING
            print(f"operation {op_id} failed: {exc}", file=sys.stderr, flush=True)
            self._status(op_id, "FAILED", str(exc)[:200])

    def _deviceproxy(self, connect):
        from c8ydp.device_proxy import DeviceProxy
        DeviceProxy(connect["hostname"], int(connect["port"]), CHUNK, connect["connectionKey"], self.args.url,
                    self.args.user, self.args.password, None, None).connect()

    def _websocat(self, connect):
        """docs/wire.md section 4: the Authorization header and the `binary` subprotocol, binary frames."""
        ws_url = "ws" + self.args.url[len("http"):] + "/service/remoteaccess/device/" + connect["connectionKey"]
        env = dict(os.environ, SSL_CERT_FILE=self.args.ca_file) if self.args.ca_file else None
        self.children.append(subprocess.Popen(
            [WEBSOCAT, "--binary", "--protocol", "binary", f"--header=Authorization: {self.authorization}",
             ws_url, f"tcp:{connect['hostname']}:{connect['port']}"], env=env))

    def _status(self, op_id, status, reason=None):
        body = {"status": status, **({"failureReason": reason} if reason else {})}
        self._call("PUT", f"/devicecontrol/operations/{op_id}", json=body)

    def _call(self, method, path, **options):
        # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's own
        response = self.session.request(method, self.args.url + path, timeout=30,
                                        verify=self.args.ca_file or True, **options)
        response.raise_for_status()
        return response.json()


if __name__ == "__main__":
    Driver(parse_args(sys.argv[1:])).run()
