"""The ``fhirclient`` package's SMART flow against a real HTTP server, end to end: discovery from
the CapabilityStatement, authorize (sign-in and consent pages driven as a browser would post
them), code exchange with PKCE, then FHIR reads with the token."""
from __future__ import annotations

import re
import socket
import threading
from html import unescape

import pytest
import requests
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from healthhub.auth.registry import create_client, create_user
from healthhub.clock import utcnow
from tests.conftest import authorized, put_json

CALLBACK = "http://localhost:9999/callback"
SCOPE = "launch/patient patient/*.rs openid fhirUser offline_access"


@pytest.fixture
def served(make_app):
    """The app on a real port, its base URL set to that address (``aud`` must match)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = make_app(base_url=f"http://127.0.0.1:{port}")
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(5)


def _hidden(html):
    return {unescape(m.group(1)): unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)}


def test_fhirclient_standalone_launch(served):
    app, base = served
    engine = app.extensions["healthhub.db"].engine
    with Session(engine) as session, session.begin():
        registered = create_client(session, name="fhirclient app", grant="authorization_code", scope=SCOPE,
                                   now=utcnow(), redirect_uris=(CALLBACK,))
        create_user(session, username="nurse", password="a long enough password", role="clinician", now=utcnow())
    put_json(authorized(app), "/fhir/Patient/pa", {"resourceType": "Patient", "id": "pa",
                                                   "name": [{"family": "Mukamana", "given": ["Grace"]}]})

    smart = smart_client.FHIRClient(settings={"app_id": registered.client_id, "api_base": f"{base}/fhir",
                                              "redirect_uri": CALLBACK, "scope": SCOPE})
    url = smart.authorize_url
    assert url.startswith(f"{base}/auth/authorize?") and "code_challenge=" in url

    browser = requests.Session()
    login = browser.get(url, timeout=10)
    assert login.status_code == 200
    consent = browser.post(f"{base}/auth/authorize", timeout=10,
                           data={**_hidden(login.text), "username": "nurse", "password": "a long enough password"})
    assert consent.status_code == 200, consent.text[:500]
    scopes = re.findall(r'name="grant_scope" value="([^"]+)" checked', consent.text)
    done = browser.post(f"{base}/auth/authorize", allow_redirects=False, timeout=10,
                        data={**_hidden(consent.text), "step": "allow", "grant_scope": scopes, "patient": "pa"})
    assert done.status_code == 302

    smart.handle_callback(done.headers["Location"])
    assert smart.ready and smart.patient_id == "pa"
    patient = Patient.read("pa", smart.server)
    assert patient.name[0].family == "Mukamana"
    assert smart.patient.id == "pa"
