"""The shared Synthea corpus: which files, in which order, and re-identified copies of them.

Load order (as ``tests/acceptance/test_shared_corpus.py`` does): the two infrastructure *batch*
Bundles first (Organizations, Locations, Practitioners, PractitionerRoles, each with
``ifNoneExist``), then the patient *transaction* Bundles whose text contains ``?identifier=``
(fhir-data-pipes style, with conditional references to the infrastructure), then the others
(smart-on-fhir style). The smart-on-fhir Bundles POST their own Organizations that share a
Synthea identifier with the infrastructure ones; loaded earlier they would make the conditional
references ambiguous (412).

Copies (:class:`CopyFactory`) make the larger data sets: every entry gets a fresh
``urn:uuid:`` fullUrl and every reference to it is rewritten, every top-level
``identifier.value`` gets a copy tag, ``Patient.name.family`` gets the same tag, and the few
conditional references that the base load made ambiguous are pinned to the infrastructure
resource they meant.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from healthhub.config import PROJECT_ROOT

#: ``../shared/data/synthea`` beside the checkout (where CI keeps the shared corpus).
SYNTHEA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "synthea"

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONDITIONAL = re.compile(r"^[A-Z][A-Za-z]+\?identifier=")


@dataclass(frozen=True)
class BundleFile:
    """One corpus file and what the harness needs to know about it."""

    path: Path
    kind: str  # "batch" (infrastructure) or "transaction" (one patient)
    entries: int
    conditional: bool  # holds conditional references (``Type?identifier=…``)


@dataclass
class Corpus:
    """The ordered corpus: infrastructure batches, then patient transactions."""

    infrastructure: list[BundleFile]
    patients: list[BundleFile]

    @property
    def ordered(self) -> list[BundleFile]:
        return [*self.infrastructure, *self.patients]

    @property
    def resources(self) -> int:
        return sum(b.entries for b in self.ordered)


def load_corpus(root: Path = SYNTHEA_DIR) -> Corpus:
    """Find the corpus files and put them in load order."""
    if not root.is_dir():
        raise SystemExit(f"Synthea corpus not found at {root} (expected ../shared/data/synthea beside the checkout)")
    infra = [_describe(p) for p in sorted((root / "infrastructure").glob("*.json"))]
    patients = [_describe(p) for p in sorted(root.glob("*.json"))]
    patients.sort(key=lambda b: (not b.conditional, b.path.name))
    if not infra or not patients:
        raise SystemExit(f"Synthea corpus at {root} is incomplete: {len(infra)} infrastructure, "
                         f"{len(patients)} patient bundle(s)")
    return Corpus(infra, patients)


def _describe(path: Path) -> BundleFile:
    raw = path.read_bytes()
    doc = orjson.loads(raw)
    return BundleFile(path, str(doc.get("type")), len(doc.get("entry") or []), b"?identifier=" in raw)


# -- what the base load created (filled from the hub's responses) -----------------------------

@dataclass
class LoadedBundle:
    """A corpus Bundle as stored: entry ``fullUrl`` → ``Type/id`` the hub assigned."""

    file: BundleFile
    doc: dict[str, Any]
    ids: dict[str, str] = field(default_factory=dict)


def locations(response: Mapping[str, Any]) -> list[str | None]:
    """``Type/id`` of each response entry (``response.location`` without ``_history``)."""
    out: list[str | None] = []
    for entry in response.get("entry") or []:
        loc = (entry.get("response") or {}).get("location")
        out.append("/".join(loc.split("/")[:2]) if isinstance(loc, str) else None)
    return out


def pinned_references(loaded: list[LoadedBundle]) -> dict[str, str]:
    """Conditional references that the base load made ambiguous → the infrastructure resource.

    A conditional reference ``Organization?identifier=s|v`` is ambiguous once a smart-on-fhir
    Bundle has POSTed its own Organization with identifier ``s|v``. The infrastructure batch's
    entry for that identifier (``ifNoneExist: identifier=s|v``) is the one the reference meant.
    """
    infra: dict[str, str] = {}
    created: set[str] = set()
    for lb in loaded:
        for i, entry in enumerate(lb.doc.get("entry") or []):
            request = entry.get("request") or {}
            resource = entry.get("resource") or {}
            rtype = resource.get("resourceType")
            if lb.file.kind == "batch" and request.get("ifNoneExist"):
                target = lb.ids.get(entry.get("fullUrl") or f"#{i}")
                if target:
                    infra[f"{rtype}?{request['ifNoneExist']}"] = target
            elif lb.file.kind == "transaction":
                for ident in resource.get("identifier") or []:
                    created.add(f"{rtype}?identifier={ident.get('system')}|{ident.get('value')}")
    return {ref: target for ref, target in infra.items() if ref in created}


# -- re-identified copies -------------------------------------------------------------------

@dataclass(frozen=True)
class Copy:
    """One synthetic transaction Bundle (serialised) and its number of entries."""

    body: bytes
    entries: int
    source: str


class CopyFactory:
    """Endless re-identified copies of the patient Bundles, round-robin over the corpus."""

    def __init__(self, patients: list[BundleFile], pinned: Mapping[str, str]) -> None:
        self._raw = [(b, b.path.read_bytes()) for b in patients]
        self._pinned = dict(pinned)
        self.made = 0

    def __iter__(self) -> Iterator[Copy]:
        return self

    def __next__(self) -> Copy:
        file, raw = self._raw[self.made % len(self._raw)]
        self.made += 1
        return Copy(reidentify(raw, f"c{self.made:06d}", self._pinned), file.entries, file.path.name)


#: Syllables that make each copy's given name its own (see :func:`reidentify`).
_SYLLABLES = ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze", "bo", "da", "fi", "gu", "he", "jo")


def _other_person(resource: dict[str, Any], number: int) -> None:
    """Make a copy's Patient another person: a given name, a birth date and a phone of its own.
    The hub links the records one person has at several hospitals (healthhub/mpi), and copies
    that differ only by a suffix of the family name are, to it, the same person: at 1M resources
    every copy of a patient was linked into one person of ~120 records, and its ``$everything``
    returned all of them (bench/RESULTS.md, fourth session)."""
    for name in resource.get("name") or []:
        given = name.get("given")
        if isinstance(given, list) and given and isinstance(given[0], str):
            given[0] = _word(number * 7919 + 13)
        if isinstance(name.get("family"), str):  # still starts with the original: name searches find copies
            name["family"] = f"{name['family']}{_word(number)}"
    birth = resource.get("birthDate")
    if isinstance(birth, str) and len(birth) == 10:
        shifted = date.fromisoformat(birth) - timedelta(days=(number * 97) % 7300 + 1)
        resource["birthDate"] = shifted.isoformat()
    for telecom in resource.get("telecom") or []:
        if telecom.get("system") == "phone" and isinstance(telecom.get("value"), str):
            telecom["value"] = f"555-{number // 10000 % 1000:03d}-{number % 10000:04d}"


def _word(number: int) -> str:
    """A pronounceable word for a number (four syllables): a name no other copy has."""
    return "".join(_SYLLABLES[(number >> shift) & 15] for shift in (0, 4, 8, 12)).capitalize()


def reidentify(raw: bytes, tag: str, pinned: Mapping[str, str]) -> bytes:
    """A copy of a patient transaction Bundle that shares no id, fullUrl or identifier with it,
    about another person (:func:`_other_person`).

    Every UUID that names an entry (its ``fullUrl`` is ``urn:uuid:<uuid>``) is replaced by a new
    one wherever it appears (fullUrl, references, ``resource.id``, identifiers equal to it), so
    references inside the copy stay consistent.
    """
    doc = orjson.loads(raw)
    fresh = {}
    for entry in doc.get("entry") or []:
        full_url = entry.get("fullUrl") or ""
        if full_url.startswith("urn:uuid:"):
            fresh[full_url[9:].encode()] = str(uuid.uuid4()).encode()
    text = _UUID.sub(lambda m: fresh.get(m.group(0), m.group(0)), raw)
    doc = orjson.loads(text)
    for entry in doc.get("entry") or []:
        resource = entry.get("resource") or {}
        for ident in resource.get("identifier") or []:
            if isinstance(ident.get("value"), str):
                ident["value"] = f"{ident['value']}-{tag}"
        if resource.get("resourceType") == "Patient":
            _other_person(resource, int("".join(c for c in tag if c.isdigit()) or 0))
        if pinned:
            entry["resource"] = _pin(resource, pinned)
    return orjson.dumps(doc)


def _pin(node: Any, pinned: Mapping[str, str]) -> Any:
    """Replace ambiguous conditional references by the literal reference they meant."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and _CONDITIONAL.match(v):
                out[k] = pinned.get(v, v)
            else:
                out[k] = _pin(v, pinned)
        return out
    if isinstance(node, list):
        return [_pin(v, pinned) for v in node]
    return node
