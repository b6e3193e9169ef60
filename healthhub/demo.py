"""The demo data set that ``make run`` loads once (see ``demo_data/SOURCES.md``)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from . import jsonio
from .clock import utcnow
from .context import RequestContext
from .db import Database
from .mpi import index as mpi_index
from .storage.bundle import BundleProcessor
from .storage.models import AppState
from .storage.repository import Repository

DEMO_DIR = Path(__file__).parent / "demo_data"
DEMO_KEY = "demo.data"
DEMO_VERSION = "synthea-5-v1"
DEMO_CONTEXT = RequestContext(actor="healthhub-demo", source="urn:healthhub:demo")
#: Identifier system of the demo hospitals' Organizations: their hospital (sender) codes.
SENDER_CODES = "urn:healthhub:sender"


def idempotent(bundle: dict[str, Any]) -> dict[str, Any]:
    """Turn ``POST`` entries whose fullUrl is ``urn:uuid:X`` into ``PUT Type/X`` (same ids every time)."""
    entries = []
    for entry in bundle.get("entry") or []:
        full_url = entry.get("fullUrl", "")
        resource = entry.get("resource") or {}
        if entry.get("request", {}).get("method") == "POST" and full_url.startswith("urn:uuid:"):
            rid = full_url[len("urn:uuid:"):]
            entry = {**entry, "resource": {**resource, "id": rid},
                     "request": {"method": "PUT", "url": f"{resource['resourceType']}/{rid}"}}
        entries.append(entry)
    return {**bundle, "entry": entries}


def load(db: Database, force: bool = False) -> Counter[str] | None:
    """Load the demo bundles unless this version is already loaded; return outcome counts."""
    with db.transaction() as session:
        state = session.get(AppState, DEMO_KEY)
        if state is not None and state.value == DEMO_VERSION and not force:
            return None
        counts: Counter[str] = Counter()
        repo = Repository(session, DEMO_CONTEXT)
        for path in sorted(DEMO_DIR.glob("*.json")):
            response = BundleProcessor(repo, db.config.fhir_base).process(idempotent(jsonio.loads(path.read_bytes())))
            counts.update(e["response"]["status"] for e in response["entry"])
        mpi_index.update(session, repo.written_patients, now=utcnow())  # link records of one person
        if state is None:
            session.add(AppState(key=DEMO_KEY, value=DEMO_VERSION))
        else:
            state.value = DEMO_VERSION
        return counts


def patients() -> list[tuple[str, str]]:
    """(id, display name) of the demo patients, as ``idempotent`` stores them."""
    out = []
    for path in sorted(DEMO_DIR.glob("*.json")):
        for entry in jsonio.loads(path.read_bytes()).get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "Patient":
                name = (resource.get("name") or [{}])[0]
                display = " ".join([*name.get("given", []), name.get("family", "")]).strip()
                out.append((entry["fullUrl"][len("urn:uuid:"):], display))
    return out


DEMO_ACCESS_KEY = "demo.access"
DEMO_APP_REDIRECT = "http://localhost:8000/callback"


def seed_access(db: Database) -> list[str] | None:
    """Create the demo users and clients once; return lines to show (their credentials: shown
    this once, since the hub keeps only hashes), or None when they exist already."""
    import secrets

    from .auth.registry import create_client, create_user
    from .clock import utcnow

    with db.transaction() as session:
        if session.get(AppState, DEMO_ACCESS_KEY) is not None:
            return None
        now = utcnow()
        lines = ["demo users (sign in at /auth/authorize; synthetic, for trying the hub only):"]
        practitioner = _first_practitioner()
        for username, role in (("demo-clinician", "clinician"), ("demo-officer", "public-health"),
                               ("demo-admin", "admin")):
            password = secrets.token_urlsafe(12)
            create_user(session, username=username, password=password, role=role, now=now,
                        practitioner=practitioner if role == "clinician" else None)
            lines.append(f"  {username:<16} password {password}  ({role})")
        backend = create_client(session, name="HealthHub demo backend", grant="client_credentials",
                                scope="system/*.cruds stats.read", now=now)
        app = create_client(session, name="HealthHub demo app", grant="authorization_code", now=now,
                            scope="launch/patient openid fhirUser offline_access patient/*.rs user/*.rs",
                            redirect_uris=(DEMO_APP_REDIRECT,))
        lines += ["demo clients:",
                  f"  backend (client_credentials, client_secret_basic): client_id {backend.client_id} "
                  f"client_secret {backend.client_secret}",
                  f"  app (authorization_code + PKCE, public, redirect {DEMO_APP_REDIRECT}): "
                  f"client_id {app.client_id}"]
        session.add(AppState(key=DEMO_ACCESS_KEY, value="v1"))
        return lines


def _first_practitioner() -> str | None:
    for path in sorted(DEMO_DIR.glob("*.json")):
        for entry in jsonio.loads(path.read_bytes()).get("entry") or []:
            if (entry.get("resource") or {}).get("resourceType") == "Practitioner":
                return f"Practitioner/{entry['fullUrl'][len('urn:uuid:'):]}"
    return None


#: Demo sending hospitals: HOSP-A for the README's HL7 v2 examples, H01-H03 for its CSV example.
DEMO_SENDERS = (("HOSP-A", "Demo Hospital A"), ("H01", "Demo Hospital 01 (Bangkok)"),
                ("H02", "Demo Hospital 02 (Chiang Mai)"), ("H03", "Demo Hospital 03 (Khon Kaen)"))


def seed_senders(db: Database) -> list[str]:
    """Register the demo senders that are missing (time zone Asia/Bangkok), each with its
    Organization (``Organization/demo-<code>``, made when missing); their codes."""
    from .ingest import senders

    made = []
    with db.transaction() as session:
        repo = Repository(session, DEMO_CONTEXT)
        for code, name in DEMO_SENDERS:
            org_id = f"demo-{code.lower()}"
            organization = f"Organization/{org_id}"
            if not repo.current_many("Organization", [org_id]):
                repo.update("Organization", org_id, {"resourceType": "Organization", "id": org_id, "active": True,
                                                     "name": name, "identifier": [{"system": SENDER_CODES, "value": code}]})
            row = session.get(senders.Sender, code)
            if row is None:
                senders.create(session, code, name, utcnow(), timezone="Asia/Bangkok", organization=organization)
                made.append(code)
            elif row.organization is None:
                row.organization = organization
    return made


DEMO_CASES_KEY = "demo.cases"


def load_cases(db: Database, pipeline: Any) -> int | None:
    """Send the synthetic case reports (``demo_cases``) through the CSV ingest once; the number
    of rows accepted, or None when they were loaded before. Needs :func:`seed_senders` first."""
    import io

    from . import demo_cases
    from .ingest.csv_profile import load_profile
    from .ingest.pipeline import Caller

    with db.transaction() as session:
        if session.get(AppState, DEMO_CASES_KEY) is not None:
            return None
    report = pipeline.receive_csv(io.BytesIO(demo_cases.as_csv()), load_profile("case-report"),
                                  Caller("cli", peer="healthhub demo (synthetic case reports)"))
    with db.transaction() as session:
        if session.get(AppState, DEMO_CASES_KEY) is None:
            session.add(AppState(key=DEMO_CASES_KEY, value=f"seed-{demo_cases.SEED}"))
    accepted: int = report.accepted
    return accepted
