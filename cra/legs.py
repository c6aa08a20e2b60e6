"""A tunnel's two legs for one operation: the target (a TCP connection or a serial port) and the
device's WebSocket to the cloud, opened at once, each within its own timeout. When either fails,
the other is closed, and the cloud leg, when it opened, carries the reason to the user's tool
(1011 and the words), which then hears why at once instead of after the platform's timeout.
"""
import logging
import threading

from cra.endpoint import EndpointError, open_tcp
from cra.errors import AgentError
from cra.websocket_leg import CLOSE_REASON_BYTES, WebSocketLegError, open_device_websocket

log = logging.getLogger("cra.agent")


class LegsFailed(AgentError):
    """Why the legs could not both be opened, as failureReason says it."""


def open_legs(request, access, serial_ports, timeout, allow):
    """(endpoint, websocket), both open; LegsFailed when either could not be. A TCP target must be
    allowed by `allow` ([agent] allow); a serial port's target is allowed by its own section."""
    legs, reasons = {}, []
    serial_port = serial_ports.mapped(request.hostname, request.port)

    def open_endpoint():
        try:
            if serial_port:
                legs["endpoint"] = serial_ports.open(serial_port)
            else:
                legs["endpoint"] = open_tcp(request.hostname, request.port, timeout, request.target, allow)
        except EndpointError as exc:
            reasons.append(str(exc))

    opener = threading.Thread(target=open_endpoint, name=f"connect-{request.operation_id}", daemon=True)
    opener.start()
    try:
        legs["ws"] = open_device_websocket(access, request.connection_key, timeout)
    except WebSocketLegError as exc:
        reasons.append(str(exc))
    opener.join()
    if len(legs) < 2 and not reasons:
        reasons.append(f"cannot connect to {request.target}: the connection attempt failed")
    if reasons:
        if "endpoint" in legs:
            legs["endpoint"].close()
        if "ws" in legs:
            close_with_reason(legs["ws"], "; ".join(reasons))
        raise LegsFailed("; ".join(reasons))
    return legs["endpoint"], legs["ws"]


def tell_user(operation_id, connection_key, access, reason, timeout):
    """Open the cloud leg only to close it with the reason, for an operation the agent will not serve."""
    try:
        close_with_reason(open_device_websocket(access, connection_key, timeout), reason)
    except WebSocketLegError as exc:
        log.debug("operation %s: could not tell the user why: %s", operation_id, exc)


def close_with_reason(ws, reason):
    """1011 and the reason, which the cloud passes on to the user's tool."""
    ws.close(status=1011, reason=reason.encode()[:CLOSE_REASON_BYTES])
