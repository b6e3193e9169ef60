"""ConceptMap registry: code translations as data, loaded from ``fhir/conceptmaps/``.

Every ``*.json`` file there is one FHIR R4B ConceptMap (https://hl7.org/fhir/R4B/conceptmap.html);
the registry reads them once, validates each against the R4B model and answers
``translate(system, code)`` the way ``ConceptMap/$translate`` would
(https://hl7.org/fhir/R4B/conceptmap-operation-translate.html), for every map at once:

- a ``group`` applies when its ``source`` is the coding's system; its ``target`` is the system of
  every coding it produces;
- an ``element`` whose ``code`` is the coding's code gives one coding per ``target`` whose
  ``equivalence`` says the concepts mean the same or the target is broader or related
  (``equivalent``, ``equal``, ``wider``, ``subsumes``, ``relatedto``). ``narrower``,
  ``specializes`` and ``inexact`` targets would add a meaning the source never had, and
  ``unmatched``/``disjoint`` say there is no map, so they give nothing
  (https://hl7.org/fhir/R4B/valueset-concept-map-equivalence.html);
- a target with ``dependsOn`` is skipped: its condition names other data than the one coding;
- when no element of a group lists the code, ``group.unmapped`` decides: ``provided`` reuses the
  code in the target system (``equivalent``), ``fixed`` gives ``unmapped.code`` (``relatedto``:
  a catch-all code only overlaps the source), ``other-map`` asks the ConceptMap whose ``url`` is
  ``unmapped.url``;
- a map whose ``status`` is ``retired`` is not used.

Codes are compared exactly (FHIR codes are case-sensitive). See ``fhir/conceptmaps/README.md``
for the format an operator extends.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from .. import config, resources
from ..outcome import FhirError

#: Where the hub's ConceptMaps live (data, not code).
CONCEPTMAP_DIR = config.PROJECT_ROOT / "fhir" / "conceptmaps"

#: R4B ConceptMapEquivalence codes whose target stands for the source concept (or a broader one).
MAPPING_EQUIVALENCES = frozenset({"equivalent", "equal", "wider", "subsumes", "relatedto"})


class ConceptMapError(ValueError):
    """A ConceptMap file that cannot be used (bad JSON, invalid R4B, or a group it cannot apply)."""


@dataclass(frozen=True)
class Translation:
    """One standard coding a ConceptMap gives for a source coding."""

    system: str
    code: str
    display: str | None
    #: The R4B ``ConceptMap.group.element.target.equivalence`` (or the one implied by ``unmapped``).
    equivalence: str
    #: ``url`` (else ``id``) of the ConceptMap that says so.
    conceptmap: str

    def coding(self) -> dict[str, Any]:
        """This translation as a FHIR Coding."""
        out: dict[str, Any] = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True)
class _Target:
    code: str | None
    display: str | None
    equivalence: str
    conditional: bool


@dataclass(frozen=True)
class _Group:
    conceptmap: str
    source: str
    target: str | None
    elements: Mapping[str, tuple[_Target, ...]]
    unmapped: Mapping[str, Any] | None


class Registry:
    """Translations from every ConceptMap given, indexed by source system."""

    def __init__(self, conceptmaps: Iterable[Mapping[str, Any]]) -> None:
        """Validate and index ``conceptmaps``; raise ConceptMapError naming the first bad one."""
        self._maps: list[Mapping[str, Any]] = []
        self._by_source: dict[str, list[_Group]] = {}
        self._by_url: dict[str, list[_Group]] = {}
        for cm in conceptmaps:
            self._add(cm)

    @classmethod
    def from_directory(cls, folder: Path) -> Registry:
        """A registry of every ``*.json`` ConceptMap in ``folder`` (sorted by file name)."""
        registry = cls(())
        for path in sorted(folder.glob("*.json")):
            try:
                registry._add(orjson.loads(path.read_bytes()))
            except orjson.JSONDecodeError as exc:
                raise ConceptMapError(f"{path}: not valid JSON: {exc}") from None
            except ConceptMapError as exc:
                raise ConceptMapError(f"{path}: {exc}") from None
        return registry

    @property
    def conceptmaps(self) -> tuple[Mapping[str, Any], ...]:
        """The ConceptMaps in use, as loaded."""
        return tuple(self._maps)

    def sources(self) -> frozenset[str]:
        """Every code system some group translates from."""
        return frozenset(self._by_source)

    def translate(self, system: str, code: str) -> list[Translation]:
        """The codings every ConceptMap gives for ``code`` of ``system`` (none when no map applies)."""
        found = self._translate(self._by_source.get(system, ()), system, code, set())
        seen: set[tuple[str, str]] = set()
        unique: list[Translation] = []
        for t in found:
            if (t.system, t.code) not in seen:
                seen.add((t.system, t.code))
                unique.append(t)
        return unique

    def _translate(self, groups: Iterable[_Group], system: str, code: str, visited: set[str]) -> list[Translation]:
        out: list[Translation] = []
        for group in groups:
            if group.source != system:
                continue
            targets = group.elements.get(code)
            if targets is not None:
                # A listed code never falls through to ``unmapped``, even when no target maps it.
                for t in targets:
                    if t.code and group.target and t.equivalence in MAPPING_EQUIVALENCES and not t.conditional:
                        out.append(Translation(group.target, t.code, t.display, t.equivalence, group.conceptmap))
            elif group.unmapped is not None:
                out.extend(self._unmapped(group, system, code, visited))
        return out

    def _unmapped(self, group: _Group, system: str, code: str, visited: set[str]) -> list[Translation]:
        # https://hl7.org/fhir/R4B/conceptmap-definitions.html#ConceptMap.group.unmapped
        um = group.unmapped or {}
        mode = um.get("mode")
        if mode == "provided" and group.target:
            return [Translation(group.target, code, None, "equivalent", group.conceptmap)]
        if mode == "fixed" and group.target and um.get("code"):
            return [Translation(group.target, um["code"], um.get("display"), "relatedto", group.conceptmap)]
        if mode == "other-map":
            url = um.get("url", "")
            if url in visited:
                return []
            return self._translate(self._by_url.get(url, ()), system, code, visited | {url})
        return []

    def _add(self, cm: Mapping[str, Any]) -> None:
        if not isinstance(cm, Mapping):
            raise ConceptMapError("not a JSON object (one ConceptMap per file)")
        name = str(cm.get("url") or cm.get("id") or f"ConceptMap #{len(self._maps) + 1}")
        try:
            resources.validate(dict(cm), "ConceptMap")
        except FhirError as exc:
            raise ConceptMapError(f"{name}: " + "; ".join(i.diagnostics for i in exc.issues)) from None
        if cm.get("status") == "retired":
            return
        groups = [_group(name, i, g) for i, g in enumerate(cm.get("group", []))]
        self._maps.append(cm)
        for group in groups:
            self._by_source.setdefault(group.source, []).append(group)
            self._by_url.setdefault(name, []).append(group)


def _group(name: str, index: int, group: Mapping[str, Any]) -> _Group:
    where = f"{name} group[{index}]"
    source = group.get("source")
    if not source:
        raise ConceptMapError(f"{where}: has no source system, so no coding can select it")
    target = group.get("target")
    elements: dict[str, list[_Target]] = {}
    for element in group.get("element", []):
        code = element.get("code")
        if not code:
            raise ConceptMapError(f"{where}: an element has no code")
        targets = elements.setdefault(code, [])
        for t in element.get("target", []):
            mapped = t["equivalence"] in MAPPING_EQUIVALENCES
            if mapped and not (t.get("code") and target):
                raise ConceptMapError(f"{where}: {code!r} maps ({t['equivalence']}) to no code of a target system")
            targets.append(_Target(t.get("code"), t.get("display"), t["equivalence"], bool(t.get("dependsOn"))))
    unmapped = group.get("unmapped")
    if unmapped is not None:
        mode = unmapped.get("mode")
        # The R4B invariants cmd-2 and cmd-3, which the model does not check.
        if mode == "fixed" and not unmapped.get("code"):
            raise ConceptMapError(f"{where}: unmapped mode 'fixed' needs a code (cmd-2)")
        if mode == "other-map" and not unmapped.get("url"):
            raise ConceptMapError(f"{where}: unmapped mode 'other-map' needs a url (cmd-3)")
        if mode in ("provided", "fixed") and not target:
            raise ConceptMapError(f"{where}: unmapped mode {mode!r} needs the group's target system")
    return _Group(name, source, target, {c: tuple(ts) for c, ts in elements.items()}, unmapped)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of ``fhir/conceptmaps/``, loaded on first use and kept for the process."""
    return Registry.from_directory(CONCEPTMAP_DIR)


def translate(system: str, code: str) -> list[Translation]:
    """The standard codings the hub's ConceptMaps give for ``code`` of ``system``."""
    return default_registry().translate(system, code)
