"""The whole shared Synthea corpus goes in through the REST API, and what is stored matches
counts computed from the raw files. Runs where the project's shared data sits beside the
checkout (as on CI); the self-contained tests under tests/api cover the same paths on copies."""
from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import SHARED, load_json, post_json

SYNTHEA = SHARED / "synthea"
pytestmark = pytest.mark.skipif(not SYNTHEA.is_dir(), reason="shared data not present beside the checkout")


def test_every_synthea_resource_is_accepted_and_stored(client):
    expected: Counter[str] = Counter()
    for path in sorted((SYNTHEA / "infrastructure").glob("*.json")):
        raw = load_json(path)
        conditional = {(e["resource"]["resourceType"], e["request"]["ifNoneExist"])
                       for e in raw["entry"] if e["request"].get("ifNoneExist")}
        expected.update(rtype for rtype, _ in conditional)
        expected.update(e["resource"]["resourceType"] for e in raw["entry"] if not e["request"].get("ifNoneExist"))
        resp = post_json(client, "/fhir", raw)
        assert resp.status_code == 200
        failed = [e["response"] for e in resp.json["entry"] if not e["response"]["status"].startswith(("200", "201"))]
        assert not failed, failed[:3]
    patients = 0
    # The smart-on-fhir bundles POST their own copies of Organizations that the infrastructure
    # files also hold (same Synthea identifier). Loaded first, they would make the fhir-data-pipes
    # bundles' conditional references ambiguous (412, as the spec requires), so those go first.
    paths = sorted(SYNTHEA.glob("*.json"), key=lambda p: ("?identifier=" not in p.read_text(), p.name))
    for path in paths:
        raw = load_json(path)
        expected.update(e["resource"]["resourceType"] for e in raw["entry"])
        patients += 1
        resp = post_json(client, "/fhir", raw)
        assert resp.status_code == 200, (path.name, resp.json)
        assert all(e["response"]["status"] == "201 Created" for e in resp.json["entry"]), path.name
    assert patients == 40
    for rtype, n in sorted(expected.items()):
        assert client.get(f"/fhir/{rtype}?_count=0").json["total"] == n, rtype
    assert client.get("/fhir/_history?_count=0").json["total"] == sum(expected.values())
