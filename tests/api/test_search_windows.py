"""Date windows (``date=ge…&date=lt…``) over stored ranges of every width, Timing outer limits,
several-valued date parameters, and totals counted from the index tables.

Expected results are computed here from the resources' own dates with the range rules of
https://hl7.org/fhir/R4B/search.html#prefix, not with the server's code."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.test_search_types import ids, make

DAY = timedelta(days=1)
END = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
START = datetime(1, 1, 1, tzinfo=UTC)

#: (start, end) of Encounter.period as written; None is an open end. Widths from one second to
#: decades, and open on either side, so that every width class of the index is exercised.
PERIODS = [
    ("2000-07-01T08:00:00Z", "2000-07-01T08:00:01Z"),
    ("2000-06-30T23:00:00Z", "2000-07-01T01:00:00Z"),
    ("2000-06-30", "2000-06-30"),
    ("2000-07-31", "2000-08-01"),
    ("2000-06", "2000-06"),
    ("2000-07", "2000-07"),
    ("2000-05-20", "2000-07-02"),
    ("2000-08-01T00:00:00Z", "2000-08-02T00:00:00Z"),
    ("1999", "1999"),
    ("2000", "2000"),
    ("1999-03-01", "2000-07-15"),
    ("1995", "2003"),
    ("1990", "2000-06-30"),
    ("1980-01-01", "2010-12-31"),
    ("2000-07-10", None),
    ("1970-01-01", None),
    (None, "2000-07-01"),
    (None, "2000-06-29"),
    ("2001-01-01", None),
]


def bounds(text: str | None, upper: bool) -> datetime:
    """[low, high] of a FHIR date at its precision (the test's own reading of the spec)."""
    if text is None:
        return END if upper else START
    if len(text) == 4:
        y = int(text)
        return datetime(y + 1, 1, 1, tzinfo=UTC) - timedelta(microseconds=1) if upper else datetime(y, 1, 1, tzinfo=UTC)
    if len(text) == 7:
        y, m = int(text[:4]), int(text[5:7])
        nxt = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
        return nxt - timedelta(microseconds=1) if upper else datetime(y, m, 1, tzinfo=UTC)
    if len(text) == 10:
        d = datetime.fromisoformat(text).replace(tzinfo=UTC)
        return d + DAY - timedelta(microseconds=1) if upper else d
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t + timedelta(seconds=1) - timedelta(microseconds=1) if upper else t


def matches(prefix: str, stored: tuple[datetime, datetime], value: str) -> bool:
    """One prefix against one stored range, per the table in search.html#prefix."""
    lo, hi = stored
    vlo, vhi = bounds(value, False), bounds(value, True)
    return {
        "eq": lo >= vlo and hi <= vhi,
        "ne": lo < vlo or hi > vhi,
        "gt": hi > vhi,
        "lt": lo < vlo,
        "ge": hi >= vlo,
        "le": lo <= vhi,
        "sa": lo > vhi,
        "eb": hi < vlo,
    }[prefix]


@pytest.fixture
def encounters(client):
    out = {}
    for start, end in PERIODS:
        period = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        eid = make(client, {"resourceType": "Encounter", "status": "finished",
                            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                            "period": period})
        out[eid] = (bounds(start, False), bounds(end, True))
    return out


WINDOWS = [("ge", "2000-07-01", "lt", "2000-08-01"), ("gt", "2000-06-30", "le", "2000-07-31"),
           ("ge", "2000-07", "le", "2000-07"), ("sa", "2000-06-15", "eb", "2000-08-15"),
           ("ge", "2000", "lt", "2001"), ("ge", "2000-07-01T00:30:00Z", "lt", "2000-07-01T08:00:00Z"),
           ("eq", "2000", "ge", "2000-07-01"), ("ge", "1999-12-31", "le", "1999-12-31")]


@pytest.mark.parametrize("p1,v1,p2,v2", WINDOWS)
def test_window_on_a_single_valued_period(client, encounters, p1, v1, p2, v2):
    want = {eid for eid, rng in encounters.items() if matches(p1, rng, v1) and matches(p2, rng, v2)}
    got = ids(client, f"/fhir/Encounter?date={p1}{v1}&date={p2}{v2}&_count=100")
    assert got == want
    body = client.get(f"/fhir/Encounter?date={p1}{v1}&date={p2}{v2}&_summary=count").json
    assert body["total"] == len(want)


def test_window_with_or_values_and_three_bounds(client, encounters):
    def want(*clauses):
        return {eid for eid, rng in encounters.items()
                if all(any(matches(p, rng, v) for p, v in alts) for alts in clauses)}
    url = "/fhir/Encounter?date=ge2000-07-01,ge1999-01-01&date=lt2000-08-01&date=le2000-07-15"
    assert ids(client, url + "&_count=100") == want([("ge", "2000-07-01"), ("ge", "1999-01-01")],
                                                   [("lt", "2000-08-01")], [("le", "2000-07-15")])
    url = "/fhir/Encounter?date=ge2000-07-01&date=lt2000-08-01,ne2000&_count=100"
    assert ids(client, url) == want([("ge", "2000-07-01")], [("lt", "2000-08-01"), ("ne", "2000")])


def test_every_pair_of_prefixes(client, encounters):
    prefixes = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
    for p1, p2 in itertools.product(prefixes, repeat=2):
        want = {eid for eid, rng in encounters.items()
                if matches(p1, rng, "2000-07-01") and matches(p2, rng, "2000-07")}
        assert ids(client, f"/fhir/Encounter?date={p1}2000-07-01&date={p2}2000-07&_count=100") == want, (p1, p2)


def test_several_valued_dates_let_each_repetition_match_a_different_value(client):
    """Encounter.location.period repeats: one location before the window, one after it. Each
    of ``ge`` and ``lt`` is met by a different period, so the encounter matches (AND of the
    repetitions, search.html#combining) although no single period overlaps the window."""
    def enc(*periods):
        return make(client, {"resourceType": "Encounter", "status": "finished",
                             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                             "location": [{"location": {"reference": "Location/x"}, "period": p} for p in periods]})
    split = enc({"start": "2000-01-01", "end": "2000-01-02"}, {"start": "2000-12-01", "end": "2000-12-02"})
    inside = enc({"start": "2000-07-10", "end": "2000-07-11"})
    before = enc({"start": "2000-01-01", "end": "2000-01-02"})
    url = "/fhir/Encounter?location-period=ge2000-07-01&location-period=lt2000-08-01"
    assert ids(client, url) == {split, inside}
    assert client.get(url + "&_summary=count").json["total"] == 2
    assert before not in ids(client, url)


def test_timing_is_searched_by_its_outer_limits(client):
    """search.html#date: "Timing: the specified scheduling details are ignored and only the
    outer limits matter"."""
    timing = make(client, {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                           "effectiveTiming": {"event": ["2020-01-05T10:00:00Z"],
                                               "repeat": {"boundsPeriod": {"start": "2020-01-01", "end": "2020-03-31"},
                                                          "frequency": 1, "period": 2, "periodUnit": "d"}}})
    assert ids(client, "/fhir/Observation?date=ge2020-02-01&date=le2020-02-28") == {timing}
    assert ids(client, "/fhir/Observation?date=2020-02") == set()  # the range is not inside February
    assert ids(client, "/fhir/Observation?date=2020") == {timing}
    assert ids(client, "/fhir/Observation?date=sa2019-12-31") == {timing}
    assert ids(client, "/fhir/Observation?date=gt2020-03-31") == set()
    open_ended = make(client, {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                               "effectiveTiming": {"repeat": {"boundsPeriod": {"start": "2021-01-01"}}}})
    assert ids(client, "/fhir/Observation?date=ge2030-01-01&date=lt2030-02-01") == {open_ended}


def test_totals_count_each_live_match_once(client):
    """The total is read from the index tables: it must skip deleted resources, count a
    resource with several matching values once, and agree with the pages."""
    pid = make(client, {"resourceType": "Patient", "name": [{"family": "Total"}]})
    made = []
    for i in range(7):
        made.append(make(client, {
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"},
                                {"system": "http://loinc.org", "code": "1-8", "display": "twice"}]},
            "effectiveDateTime": f"2021-0{i + 1}-15"}))
    assert client.delete(f"/fhir/Observation/{made[0]}").status_code in (200, 204)
    for url, want in [
        ("/fhir/Observation?code=http://loinc.org|1-8", 6),
        ("/fhir/Observation?code=1-8&subject=Patient/" + pid, 6),
        ("/fhir/Observation?code=1-8&subject:Patient.name=total", 6),
        ("/fhir/Observation?code=1-8&date=ge2021-03-01&date=lt2021-06-01", 3),
        ("/fhir/Observation?code=1-8&date=ge2021-03-01&code:not=2-9", 5),
        ("/fhir/Observation?code=1-8&_id=" + ",".join(made[:3]), 2),
    ]:
        resp = client.get(url + "&_count=2")
        assert resp.status_code == 200, resp.json
        assert resp.json["total"] == want, url
        assert len(ids_all(client, url)) == want, url


def ids_all(client, url):
    found, next_url = set(), url + "&_count=2"
    while next_url:
        body = client.get(next_url).json
        found |= {e["resource"]["id"] for e in body.get("entry", [])}
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        next_url = nxt[0].removeprefix("http://hub.test") if nxt else None
    return found
