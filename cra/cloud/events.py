"""Events: what the agent's audit trail posts (one event when a tunnel opens, one when it ends),
stored and listed as the platform's event API does.

A device user posts events for the objects it owns and reads only theirs; people read all of
their tenant's; another tenant's events do not exist (404, never listed).
"""
import re
from datetime import datetime, timedelta, timezone

from aiohttp import web

from cra.cloud.errors import ApiError, forbidden, not_found, unprocessable
from cra.cloud.inventory import visible_ids, visible_managed_object
from cra.cloud.rest import base_url, collection, page, path_id, read_object, required_string, respond, whole_number
from cra.cloud.store import EVENT_META

routes = web.RouteTableDef()

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# ISO 8601 as the platform takes it: a date, or a date and time with an offset (Z or +hh:mm), any fraction.
DATE_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?(Z|[+-]\d\d:?\d\d))?")
TIME_EXAMPLE = "2026-11-21T10:00:00.000+01:00"


def moment(text, date_only=False):
    """Microseconds since the epoch (UTC) of an ISO 8601 date and time with an offset; None when it is
    not one. A bare date (midnight UTC) only when date_only, as in dateFrom and dateTo. A space stands for
    the "+" of an offset that a query string was given unencoded (a "+" there decodes to a space)."""
    match = DATE_TIME.fullmatch(text.strip().replace(" ", "+")) if isinstance(text, str) else None
    if match is None or (match.group(4) is None and not date_only):
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        stamp = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                         int((fraction or "0")[:6].ljust(6, "0")), tzinfo=timezone.utc)
    except ValueError:  # month 13, hour 25 ...
        return None
    if offset and offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        digits = offset[1:].replace(":", "")
        stamp -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return (stamp - EPOCH) // timedelta(microseconds=1)


def render_event(request, event):
    base = base_url(request)
    source = event["source"]["id"]
    return {**event, "self": f"{base}/event/events/{event['id']}",
            "source": {"id": source, "self": f"{base}/inventory/managedObjects/{source}"}}


def event_source(request, body):
    """The managed object an event is posted for: 422 when there is none such in the tenant, 403 when
    a device user names another device's."""
    source = body.get("source")
    raw = source.get("id") if isinstance(source, dict) else None
    source_id = whole_number(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
    if source_id is None:
        raise unprocessable("event", '"source" must be an object with the "id" of a managed object')
    try:
        return visible_managed_object(request, source_id)
    except ApiError as exc:
        if exc.status == 404:
            raise unprocessable("event", f"source {source_id} does not exist") from None
        raise


@routes.post("/event/events")
async def create_event(request):
    principal = request["principal"]
    body = await read_object(request)
    type_ = required_string(body, "type", "event")
    text = required_string(body, "text", "event")
    time = body.get("time")
    stamp = moment(time)
    if stamp is None:
        raise unprocessable("event", f'"time" must be a date and time in ISO 8601 with an offset, e.g. {TIME_EXAMPLE}')
    source = event_source(request, body)
    fragments = {k: v for k, v in body.items() if k not in EVENT_META}
    event = request.app["store"].create_event(principal.tenant, int(source["id"]), type_, text, time, stamp, fragments)
    return respond(render_event(request, event), "event", 201)


def date_filter(request, key):
    raw = request.query.get(key)
    if raw is None:
        return None
    stamp = moment(raw, date_only=True)
    if stamp is None:
        raise unprocessable("event", f"{key} must be a date or a date and time in ISO 8601 with an offset, not {raw!r}")
    return stamp


@routes.get("/event/events")
async def list_events(request):
    offset, size, current = page(request, "event")
    query = request.query
    events, total = request.app["store"].events(
        request["principal"].tenant, visible_ids(request, "source"), query.get("type"), query.get("fragmentType"),
        date_filter(request, "dateFrom"), date_filter(request, "dateTo"), offset, size, oldest_first=query.get("revert") == "true")
    items = [render_event(request, event) for event in events]
    return respond(collection(request, "events", items, size, current, total), "eventCollection")


@routes.get("/event/events/{id}")
async def get_event(request):
    principal, store = request["principal"], request.app["store"]
    event_id = path_id(request, "id", "event", "Event")
    event = store.event(principal.tenant, event_id)
    if event is None:
        raise not_found("event", f"Finding event data from database failed : No event for id '{event_id}'!")
    if principal.is_device and store.managed_object(principal.tenant, int(event["source"]["id"]))["owner"] != principal.user:
        raise forbidden(f"Access is denied: event {event_id} is of another device")
    return respond(render_event(request, event), "event")
