"""Concurrent writers through a real HTTP server: no lost update, no duplicate conditional create."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import issue_token


@pytest.fixture
def HEADERS(app):
    return {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {issue_token(app)}"}


def test_if_match_lets_exactly_one_of_many_racing_updates_win(live_server, HEADERS):
    pid = requests.post(f"{live_server}/Patient", json={"resourceType": "Patient"}, headers=HEADERS,
                        timeout=30).json()["id"]

    def update(i: int) -> int:
        body = {"resourceType": "Patient", "id": pid, "birthDate": f"19{50 + i}"}
        return requests.put(f"{live_server}/Patient/{pid}", json=body, timeout=30,
                            headers={**HEADERS, "If-Match": 'W/"1"'}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(update, range(8)))
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 409, 412}
    history = requests.get(f"{live_server}/Patient/{pid}/_history", timeout=30, headers=HEADERS).json()
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']


def test_racing_conditional_creates_make_one_resource(live_server, HEADERS):
    def create(_: int) -> int:
        return requests.post(f"{live_server}/Patient", timeout=30,
                             json={"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": "1"}]},
                             headers={**HEADERS, "If-None-Exist": "identifier=urn:race|1"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(create, range(8)))
    assert statuses.count(201) == 1, statuses
    assert requests.get(f"{live_server}/Patient?identifier=urn:race|1", timeout=30,
                        headers=HEADERS).json()["total"] == 1


def test_racing_conditional_puts_in_transactions_make_one_resource(live_server, HEADERS):
    """Two hospitals' interface engines re-sending the same result at once: each transaction's
    conditional PUT (criteria locked before they are searched) creates it once in all."""
    def send(i: int) -> int:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}",
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": f"try {i}"},
                         "identifier": [{"system": "urn:race", "value": "obs-1"}]},
            "request": {"method": "PUT", "url": "Observation?identifier=urn:race|obs-1"}}]}
        return requests.post(live_server, json=bundle, headers=HEADERS, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert statuses == [200] * 8
    found = requests.get(f"{live_server}/Observation?identifier=urn:race|obs-1", timeout=30, headers=HEADERS).json()
    assert found["total"] == 1
    history = requests.get(f"{live_server}/Observation/{found['entry'][0]['resource']['id']}/_history", timeout=30,
                           headers=HEADERS).json()
    # one create, then an update per other transaction (each body differs: code.text)
    assert history["total"] == 8 and history["entry"][-1]["response"]["status"] == "201 Created"


def test_bundles_listing_types_in_opposite_orders_do_not_deadlock(live_server, HEADERS):
    """Two transactions with conditional creates of a Patient and an Observation, listed in
    opposite orders: the criteria of all types are locked in one statement, in key order (locked
    type by type, each would hold one lock and wait for the other's: a deadlock, one aborted)."""
    def bundle(round_: int, reverse: bool) -> int:
        entries = [{"resource": {"resourceType": rtype, **extra,
                                 "identifier": [{"system": "urn:order", "value": f"{rtype}-{round_}"}]},
                    "request": {"method": "POST", "url": rtype,
                                "ifNoneExist": f"identifier=urn:order|{rtype}-{round_}"}}
                   for rtype, extra in (("Patient", {}),
                                        ("Observation", {"status": "final", "code": {"text": "x"}}))]
        body = {"resourceType": "Bundle", "type": "transaction", "entry": entries[::-1] if reverse else entries}
        return requests.post(live_server, json=body, headers=HEADERS, timeout=30).status_code

    rounds = 12
    with ThreadPoolExecutor(2) as pool:
        statuses = [s for r in range(rounds) for s in pool.map(lambda rev, r=r: bundle(r, rev), (False, True))]
    assert statuses == [200] * (2 * rounds), statuses
    for rtype in ("Patient", "Observation"):
        found = requests.get(f"{live_server}/{rtype}?identifier=urn:order|&_count=100&_summary=count",
                             headers=HEADERS, timeout=30).json()
        assert found["total"] == rounds


def test_batches_listing_conditional_updates_in_opposite_orders_do_not_deadlock(live_server, HEADERS):
    """A batch runs its entries one after the other in one database transaction: their criteria
    are locked together first (locked entry by entry, two batches deadlocked and the loser
    answered 503 for all its entries)."""
    def batch(round_: int, reverse: bool) -> list[str]:
        entries = [{"resource": {"resourceType": rtype, **extra,
                                 "identifier": [{"system": "urn:order", "value": f"{rtype}-{round_}"}]},
                    "request": {"method": "PUT", "url": f"{rtype}?identifier=urn:order|{rtype}-{round_}"}}
                   for rtype, extra in (("Patient", {}),
                                        ("Observation", {"status": "final", "code": {"text": "x"}}))]
        body = {"resourceType": "Bundle", "type": "batch", "entry": entries[::-1] if reverse else entries}
        resp = requests.post(live_server, json=body, headers=HEADERS, timeout=30)
        assert resp.status_code == 200, resp.json()
        return [e["response"]["status"] for e in resp.json()["entry"]]

    rounds = 12
    with ThreadPoolExecutor(2) as pool:
        statuses = [s for r in range(rounds) for out in pool.map(lambda rev, r=r: batch(r, rev), (False, True))
                    for s in out]
    assert len(statuses) == 4 * rounds and all(s.startswith(("200", "201")) for s in statuses), statuses
    for rtype in ("Patient", "Observation"):
        found = requests.get(f"{live_server}/{rtype}?identifier=urn:order|&_summary=count",
                             headers=HEADERS, timeout=30).json()
        assert found["total"] == rounds
