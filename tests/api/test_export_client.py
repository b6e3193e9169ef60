"""A Bulk Data client as one is written against any FHIR server, over real HTTP with ``httpx``:
SMART Backend Services authorization (a signed client assertion, the token endpoint found in
``.well-known/smart-configuration``), the kick-off, polling that obeys ``Retry-After``, and
streamed downloads whose every line must parse as an R4B resource of the announced type
(``fhir.resources``). The counts must equal what the Synthea bundles hold (from their JSON),
and a decimal's written precision must survive the trip (https://hl7.org/fhir/R4B/datatypes.html#decimal).

The export worker runs as ``healthhub serve`` runs it: a thread beside the web server.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from healthhub.auth.registry import create_client
from healthhub.bulk.worker import Worker
from healthhub.clock import utcnow
from tests.api.test_export import ABDUL, ANTONIO, types_of

#: Written with a trailing zero on purpose: FHIR says 4.50 must come back as 4.50.
EXACT = {"resourceType": "Observation", "id": "exact-decimal", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
         "valueQuantity": {"value": "__DECIMAL__", "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                           "code": "mmol/L"}}


@pytest.fixture
def served(make_app: Any, tmp_path: Any) -> Iterator[tuple[Any, str]]:
    """The app on a real port (``aud`` must match its address) with an export worker thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    app = make_app(base_url=base, export_dir=str(tmp_path / "exports"))
    server = make_server("127.0.0.1", port, app, threaded=True)
    web = threading.Thread(target=server.serve_forever, daemon=True)
    runner = Worker(app.extensions["healthhub.db"], app.config["HEALTHHUB"])
    work = threading.Thread(target=runner.run_forever, daemon=True)
    web.start()
    work.start()
    try:
        yield app, base
    finally:
        runner.stopping.set()
        server.shutdown()
        web.join(5)
        work.join(10)


def backend_token(http: httpx.Client, base: str, client_id: str, key: RSAKey, scope: str) -> str:
    """SMART Backend Services: https://hl7.org/fhir/smart-app-launch/backend-services.html"""
    token_url = http.get(f"{base}/fhir/.well-known/smart-configuration").raise_for_status().json()["token_endpoint"]
    now = int(time.time())
    assertion = jwt.encode({"alg": "RS384", "kid": "bulk-1", "typ": "JWT"},
                           {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240, "iat": now,
                            "jti": uuid.uuid4().hex}, key, algorithms=["RS384"])
    resp = http.post(token_url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def poll(http: httpx.Client, status_url: str, limit: float = 60) -> httpx.Response:
    deadline = time.monotonic() + limit
    while True:
        resp = http.get(status_url)
        if resp.status_code != 202:
            return resp
        assert resp.headers["X-Progress"]
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(min(float(resp.headers["Retry-After"]), 1.0))


def test_a_bulk_client_exports_everything_over_http(served: tuple[Any, str]) -> None:
    app, base = served
    key = RSAKey.generate_key(2048)
    with Session(app.extensions["healthhub.db"].engine) as session, session.begin():
        registered = create_client(session, name="Registry", grant="client_credentials", scope="system/*.cruds",
                                   now=utcnow(), jwks={"keys": [{**key.as_dict(private=False), "kid": "bulk-1"}]})
    with httpx.Client(timeout=30) as http:
        token = backend_token(http, base, registered.client_id, key, "system/*.cruds")
        http.headers["Authorization"] = f"Bearer {token}"
        for bundle in (ABDUL, ANTONIO):
            loaded = http.post(f"{base}/fhir", content=bundle.read_bytes(),
                               headers={"Content-Type": "application/fhir+json"})
            assert loaded.status_code == 200, loaded.text[:300]
        exact = orjson.dumps(EXACT).replace(b'"__DECIMAL__"', b"4.50")
        assert http.put(f"{base}/fhir/Observation/exact-decimal", content=exact,
                        headers={"Content-Type": "application/fhir+json"}).status_code == 201

        kick = http.get(f"{base}/fhir/$export", params={"_type": "Patient,Observation,Encounter"},
                        headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
        assert kick.status_code == 202, kick.text
        manifest_resp = poll(http, kick.headers["Content-Location"])
        assert manifest_resp.status_code == 200, manifest_resp.text
        manifest = manifest_resp.json()
        assert manifest["requiresAccessToken"] is True

        got: Counter[str] = Counter()
        decimal_lines = []
        for item in manifest["output"]:
            model = get_fhir_model_class(item["type"])
            lines = 0
            with http.stream("GET", item["url"], headers={"Accept": "application/fhir+ndjson"}) as resp:
                assert resp.status_code == 200
                assert resp.headers["Content-Type"].startswith("application/fhir+ndjson")
                for line in resp.iter_lines():
                    if not line:
                        continue
                    resource = model.model_validate_json(line)  # a valid R4B resource of that type
                    assert resource.get_resource_type() == item["type"]
                    if '"exact-decimal"' in line:
                        decimal_lines.append(line)
                    lines += 1
            assert lines == item["count"]
            got[item["type"]] += lines
        # Without the token the files are not handed out (requiresAccessToken).
        bare = httpx.get(manifest["output"][0]["url"], timeout=30)
        assert bare.status_code == 401

    want = types_of(ABDUL) + types_of(ANTONIO)
    assert got == {"Patient": want["Patient"], "Observation": want["Observation"] + 1,
                   "Encounter": want["Encounter"]}
    assert len(decimal_lines) == 1 and orjson.loads(decimal_lines[0])["valueQuantity"]["value"] == 4.5
    assert "4.50" in decimal_lines[0] and "4.5," not in decimal_lines[0]
