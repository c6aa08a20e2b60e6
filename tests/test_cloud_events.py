"""cra-cloud's event API (POST/GET /event/events, GET /event/events/{id}), as the platform's: what the
agent's audit trail posts, and what a person sees in Device Management > device > Events.
"""
import re

import pytest

from toolkit.programs import ADMIN, ADMIN_T200, BOOTSTRAP, DEVICE, OTHER_DEVICE

ERROR_MEDIA_TYPE = "application/vnd.com.nsn.cumulocity.error+json"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def event_body(source, time="2026-11-21T10:00:00.000Z", **extra):
    return {"source": {"id": source}, "type": "c8y_RemoteAccessSession", "text": "a session", "time": time, **extra}


def post(cloud, auth, body):
    return cloud.api(auth).post("/event/events", json=body)


def created(cloud, auth, body):
    answer = post(cloud, auth, body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def refused(answer, status, mention=None):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith(ERROR_MEDIA_TYPE)
    body = answer.json()
    assert body["error"] and body["message"] and body["info"]
    if mention:
        assert mention in body["message"], body
    return body


def listed(cloud, auth=ADMIN, **params):
    answer = cloud.api(auth).get("/event/events", params=params)
    assert answer.status_code == 200, answer.text
    assert "eventcollection+json" in answer.headers["Content-Type"].lower()
    return answer.json()


def test_a_device_posts_an_event_for_itself_and_gets_it_back_whole(cloud):
    device_id = cloud.device_id()
    fragment = {"operationId": "10230", "target": "127.0.0.1:22", "status": "CLOSED",
                "bytesToCloud": 4127, "bytesFromCloud": 38211, "durationSeconds": 12.4, "reason": "the user closed"}
    answer = post(cloud, DEVICE, event_body(device_id, time="2026-11-21T11:00:00.123+01:00",
                                            c8y_RemoteAccessSession=fragment))
    assert answer.status_code == 201, answer.text
    assert "event+json" in answer.headers["Content-Type"].lower()
    event = answer.json()
    assert event["id"].isdigit() and event["self"] == f"{cloud.url}/event/events/{event['id']}"
    assert event["source"] == {"id": device_id, "self": f"{cloud.url}/inventory/managedObjects/{device_id}"}
    assert (event["type"], event["text"], event["time"]) == ("c8y_RemoteAccessSession", "a session",
                                                            "2026-11-21T11:00:00.123+01:00")
    assert TIMESTAMP.match(event["creationTime"])
    assert event["c8y_RemoteAccessSession"] == fragment
    for auth in (ADMIN, DEVICE):
        again = cloud.api(auth).get(f"/event/events/{event['id']}")
        assert again.status_code == 200 and "event+json" in again.headers["Content-Type"].lower()
        assert again.json() == event


@pytest.mark.parametrize("change, mention", [
    ({"source": None}, '"source"'),
    ({"source": {}}, '"source"'),
    ({"source": {"id": "x1"}}, '"source"'),
    ({"source": {"id": "99999999"}}, "source 99999999 does not exist"),
    ({"type": None}, '"type"'),
    ({"type": ""}, '"type"'),
    ({"text": None}, '"text"'),
    ({"text": 7}, '"text"'),
    ({"time": None}, '"time"'),
    ({"time": "yesterday"}, '"time"'),
    ({"time": "2026-11-21T10:00:00"}, '"time"'),  # no offset: which moment is it?
    ({"time": "2026-13-01T10:00:00Z"}, '"time"'),
])
def test_an_event_without_its_required_fields_is_422(cloud, change, mention):
    body = {k: v for k, v in {**event_body(cloud.device_id()), **change}.items() if v is not None}
    refused(post(cloud, DEVICE, body), 422, mention)
    assert listed(cloud)["events"] == []


def test_a_device_posts_only_for_itself(cloud):
    other = cloud.device_id("gw-002")
    refused(post(cloud, DEVICE, event_body(other)), 403)
    refused(post(cloud, BOOTSTRAP, event_body(cloud.device_id())), 403)
    created(cloud, OTHER_DEVICE, event_body(other))
    created(cloud, ADMIN, event_body(cloud.device_id()))  # people may post for any object of their tenant
    assert [e["source"]["id"] for e in listed(cloud)["events"]] == [cloud.device_id(), other]


def test_a_device_reads_only_its_own_events(cloud):
    mine, theirs = cloud.device_id(), cloud.device_id("gw-002")
    own = created(cloud, DEVICE, event_body(mine))
    other = created(cloud, OTHER_DEVICE, event_body(theirs))
    assert [e["id"] for e in listed(cloud, DEVICE)["events"]] == [own["id"]]
    assert listed(cloud, DEVICE, source=theirs)["events"] == []
    refused(cloud.api(DEVICE).get(f"/event/events/{other['id']}"), 403)
    assert {e["id"] for e in listed(cloud, ADMIN)["events"]} == {own["id"], other["id"]}


def test_events_list_by_source_newest_first_by_time_and_page(cloud):
    device_id, other = cloud.device_id(), cloud.device_id("gw-002")
    times = ["2026-11-21T10:00:03.000Z", "2026-11-21T10:00:01.000Z", "2026-11-21T11:00:05.000+01:00",
             "2026-11-21T10:00:04.000Z", "2026-11-21T10:00:02.000Z", "2026-11-21T10:00:06.000Z"]
    ids = {time: created(cloud, DEVICE, event_body(device_id, time=time, text=time))["id"] for time in times}
    created(cloud, OTHER_DEVICE, event_body(other, time="2026-11-21T10:00:09.000Z"))
    newest_first = [ids[t] for t in ["2026-11-21T10:00:06.000Z", "2026-11-21T11:00:05.000+01:00",
                                     "2026-11-21T10:00:04.000Z", "2026-11-21T10:00:03.000Z",
                                     "2026-11-21T10:00:02.000Z", "2026-11-21T10:00:01.000Z"]]
    first = listed(cloud, source=device_id, pageSize=4, withTotalElements="true")
    assert [e["id"] for e in first["events"]] == newest_first[:4]
    assert first["statistics"] == {"currentPage": 1, "pageSize": 4, "totalElements": 6}
    assert first["next"].startswith(f"{cloud.url}/event/events?") and "currentPage=2" in first["next"]
    second = cloud.api(ADMIN).get(first["next"][len(cloud.url):]).json()
    assert [e["id"] for e in second["events"]] == newest_first[4:]
    assert listed(cloud, source=device_id, pageSize=4, currentPage=3)["events"] == []
    oldest_first = listed(cloud, source=device_id, pageSize=10, revert="true")
    assert [e["id"] for e in oldest_first["events"]] == newest_first[::-1]
    window = listed(cloud, source=device_id, pageSize=10, dateFrom="2026-11-21T10:00:02Z", dateTo="2026-11-21T10:00:05Z")
    assert [e["id"] for e in window["events"]] == newest_first[2:5]
    assert listed(cloud, source=device_id, type="c8y_Other")["events"] == []
    refused(cloud.api(ADMIN).get("/event/events", params={"dateFrom": "soon"}), 422, "dateFrom")
    refused(cloud.api(ADMIN).get("/event/events", params={"pageSize": "0"}), 422, "pageSize")


def test_another_tenant_cannot_see_the_events(cloud):
    event = created(cloud, DEVICE, event_body(cloud.device_id()))
    assert listed(cloud, ADMIN_T200)["events"] == []
    assert listed(cloud, ADMIN_T200, source=cloud.device_id())["events"] == []
    refused(cloud.api(ADMIN_T200).get(f"/event/events/{event['id']}"), 404)
    # nor post for an object of another tenant: there is no such object in its own
    refused(post(cloud, ADMIN_T200, event_body(cloud.device_id())), 422, "does not exist")
    refused(cloud.api(ADMIN).get("/event/events/not-an-id"), 404)


def test_events_survive_a_restart(cloud):
    event = created(cloud, DEVICE, event_body(cloud.device_id()))
    cloud.restart()
    assert cloud.api(ADMIN).get(f"/event/events/{event['id']}").json() == {
        **event, "self": f"{cloud.url}/event/events/{event['id']}",
        "source": {**event["source"], "self": f"{cloud.url}/inventory/managedObjects/{event['source']['id']}"}}


def test_deleting_a_device_deletes_its_events(cloud):
    other = cloud.device_id("gw-002")
    event = created(cloud, OTHER_DEVICE, event_body(other))
    kept = created(cloud, DEVICE, event_body(cloud.device_id()))
    assert cloud.api(ADMIN).delete(f"/inventory/managedObjects/{other}").status_code == 204
    refused(cloud.api(ADMIN).get(f"/event/events/{event['id']}"), 404)
    assert [e["id"] for e in listed(cloud)["events"]] == [kept["id"]]
