"""History at instance, type and system level, with _since and paging links."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from tests.conftest import post_json, put_json


def follow(client, url):
    parts = urlsplit(url)
    assert parts.netloc == "hub.test"
    return client.get(f"{parts.path}?{parts.query}")


def test_instance_type_and_system_history(client):
    pid = post_json(client, "/fhir/Patient", {"resourceType": "Patient", "gender": "male"}).json["id"]
    put_json(client, f"/fhir/Patient/{pid}", {"resourceType": "Patient", "id": pid, "gender": "female"})
    client.delete(f"/fhir/Patient/{pid}")
    oid = post_json(client, "/fhir/Organization", {"resourceType": "Organization", "name": "Kigali General"}).json["id"]

    inst = client.get(f"/fhir/Patient/{pid}/_history").json
    assert inst["type"] == "history" and inst["total"] == 3
    assert [e["request"]["method"] for e in inst["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in inst["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert inst["entry"][1]["resource"]["gender"] == "female"
    assert inst["entry"][2]["request"]["url"] == "Patient"
    assert inst["entry"][1]["fullUrl"] == f"http://hub.test/fhir/Patient/{pid}"

    typ = client.get("/fhir/Patient/_history").json
    assert typ["total"] == 3
    system = client.get("/fhir/_history").json
    assert system["total"] == 4
    assert system["entry"][0]["resource"]["id"] == oid  # newest first
    assert client.get("/fhir/Patient/unknown/_history").status_code == 404


def test_history_paging_is_stable_while_data_changes(client):
    ids = [post_json(client, "/fhir/Patient", {"resourceType": "Patient", "birthDate": f"200{i}"}).json["id"]
           for i in range(5)]
    first = client.get("/fhir/Patient/_history?_count=2").json
    assert [e["resource"]["id"] for e in first["entry"]] == ids[::-1][:2]
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    # A write between pages must not shift what the next page holds.
    post_json(client, "/fhir/Patient", {"resourceType": "Patient"})
    second = follow(client, next_url).json
    assert next(link["url"] for link in second["link"] if link["relation"] == "self") == next_url
    assert [e["resource"]["id"] for e in second["entry"]] == ids[::-1][2:4]
    third = follow(client, next(link["url"] for link in second["link"] if link["relation"] == "next")).json
    assert [e["resource"]["id"] for e in third["entry"]] == ids[:1]
    assert not any(link["relation"] == "next" for link in third["link"])


def test_history_since(client):
    post_json(client, "/fhir/Patient", {"resourceType": "Patient"})
    time.sleep(0.01)
    later = post_json(client, "/fhir/Patient", {"resourceType": "Patient", "gender": "male"}).json
    since = later["meta"]["lastUpdated"]
    page = client.get("/fhir/Patient/_history", query_string={"_since": since}).json
    assert [e["resource"]["id"] for e in page["entry"]] == [later["id"]]
    assert client.get("/fhir/_history?_since=yesterday").status_code == 400
    assert client.get("/fhir/_history?_count=abc").status_code == 400
