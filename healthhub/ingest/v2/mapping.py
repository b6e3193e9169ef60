"""One parsed message → one transaction Bundle: the segments read in order, grouped as the
message structures group them (ORC/OBR/OBX/NTE/SPM for ORU^R01, ORC/RXA/RXR/OBX/NTE for VXU^V04).

Segments the hub does not map are skipped: Z-segments (site-defined, no general meaning), and
IN1/IN2/GT1/PR1/ROL/PRT/ARV/TXA/FT1/… (coverage, billing, roles: outside what HealthHub keeps).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from healthhub.ingest.normalize import SenderProfile

from .bundle import BundleBuilder
from .conditions import allergy, allergy_key, condition, condition_key
from .context import Context
from .encounter import encounter
from .immunization import add_route, immunization, immunization_key
from .model import Mapped, Merge, ParsedMessage, Seg
from .patient import patient, patient_identifiers, related_person, write_patient
from .results import diagnostic_report, observation, order_key, specimen, specimen_key

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# ADT events about the person only (A28 add, A31 update, A40 merge): no visit to record.
_PERSON_ONLY = frozenset({"A28", "A31", "A40"})


@dataclass
class Group:
    """Resources under one OBR (a report) or one RXA (an immunization), or the patient's own."""

    key: str  # the business key the group's observations are numbered under
    resource: dict[str, Any] | None = None  # DiagnosticReport or Immunization
    ref: str | None = None
    effective: str | None = None  # OBR-7: the observations' time when OBX-14 is empty
    category: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)  # the Observations
    result_refs: list[str] = field(default_factory=list)  # their fullUrls
    specimens: list[str] = field(default_factory=list)
    obx_count: int = 0
    spm_count: int = 0


@dataclass
class Notes:
    """NTE lines, gathered per resource, written once the message has been read."""

    lines: dict[int, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)

    def add(self, target: dict[str, Any], nte: Seg) -> None:
        """Attach one NTE's comment (NTE-3, every repetition) to ``target``."""
        text = "\n".join(r.text() for r in nte.reps(3))
        self.lines.setdefault(id(target), (target, []))[1].append(text)

    def write(self) -> None:
        """Put each resource's comment where its type keeps one."""
        for target, lines in self.lines.values():
            text = "\n".join(lines).strip()
            if not text:
                continue
            if target["resourceType"] == "DiagnosticReport":
                # R4B DiagnosticReport has no note; the IG puts OBR's NTE on the ServiceRequest,
                # which the hub does not keep, so the comment becomes the report's conclusion.
                target["conclusion"] = text
            else:
                target.setdefault("note", []).append({"text": text})


class _Mapper:
    def __init__(self, message: ParsedMessage, sender: SenderProfile) -> None:
        self.message = message
        self.ctx = Context(message, sender)
        self.builder = BundleBuilder(sender)
        mtype, _, trigger = message.header.message_type.partition("^")
        self.type, self.trigger = mtype, trigger
        self.control_id = message.header.control_id
        self.notes = Notes()
        self.patient_ref = ""
        self.patient_label = ""
        self.patients: dict[str, str] = {}  # patient key → fullUrl
        self.encounter_ref: str | None = None
        self.visit: str | None = None
        self.encounters: dict[tuple[str, str], str] = {}  # visit identifier → fullUrl
        self.specimen_refs: dict[str, str] = {}
        self.groups: list[Group] = []

    def run(self) -> Mapped:
        header = self.message.header
        for seg in self.message.segments:
            if not _SEGMENT_ID.match(seg.id):
                self.ctx.error(seg.id[:20] or "?", None, "100",
                               f"Segment {seg.index + 1} has the name {seg.id[:20]!r}, which is not a segment id")
        self._replacement_characters()
        sections = self._sections()
        if not sections:
            self.ctx.error("PID", None, "100", f"{header.message_type} has no PID segment: there is no patient")
            return self._result(None)
        if self.type == "ORU" and self.message.first("OBR") is None:
            self.ctx.error("OBR", None, "100", "ORU^R01 has no OBR segment: there is no result to store")
        merge = None
        for i, (pid, segments) in enumerate(sections):
            self._patient(pid, segments)
            if i == 0 and self.type == "ADT" and self.trigger == "A40":
                merge = self._merge(pid, segments, len(sections))
            self._encounter(segments)
            self._walk(segments)
        self._finish()
        return self._result(merge)

    def _sections(self) -> list[tuple[Seg, list[Seg]]]:
        """The message cut at each PID: an ORU^R01 or VXU^V04 may carry several patients."""
        sections: list[tuple[Seg, list[Seg]]] = []
        for seg in self.message.segments:
            if seg.id == "PID":
                sections.append((seg, []))
            elif sections:
                sections[-1][1].append(seg)
        return sections

    def _replacement_characters(self) -> None:
        """Warn where U+FFFD stands in a value: characters were lost before the message arrived
        (decoded with the wrong character set on the way), so the value may be wrong."""
        if not self.message.has_replacement_character:
            return
        for seg in self.message.segments:
            for fld in seg.fields_containing("\ufffd"):
                self.ctx.warn(seg, fld, "102", f"{seg.id}-{fld} holds U+FFFD (a character lost in transcoding "
                                               "before the message reached HealthHub); stored as received")

    def _result(self, merge: Merge | None) -> Mapped:
        return Mapped(self.message.header, self.builder.bundle(), self.ctx.issues, self.ctx.notes, merge)

    # -- patient-level -------------------------------------------------------------------

    def _patient(self, pid: Seg, segments: list[Seg]) -> None:
        pd1 = next((s for s in segments if s.id == "PD1"), None)
        res, key = patient(self.ctx, pid, pd1)
        label = key.value if key else f"msg:{self.control_id}/pid{pid.seq}"
        if label in self.patients:  # the same patient twice in one message: one entry
            self.patient_ref = self.patients[label]
        else:
            self.patient_ref = write_patient(self.ctx, self.builder, res, key, demographics=self.type == "ADT")
            self.patients[label] = self.patient_ref
        self.patient_label = label
        self.encounter_ref = self.visit = None

    def _merge(self, pid: Seg, segments: list[Seg], patients: int) -> Merge | None:
        mrgs = [s for s in segments if s.id == "MRG"]
        if patients > 1 or len(mrgs) > 1:
            self.ctx.error("PID", None, "100", "ADT^A40 with more than one PID/MRG pair: send one merge per message")
        scratch = Context(self.message, self.ctx.sender)  # the PID-3 warnings are already reported
        surviving = [i for i, _ in patient_identifiers(scratch, pid, 3)]
        retired = [i for i, _ in patient_identifiers(self.ctx, mrgs[0], 1)] if mrgs else []
        if not retired:
            self.ctx.error(mrgs[0] if mrgs else "MRG", 1, "101",
                           "MRG-1 (prior patient identifier list) is required for ADT^A40")
            return None
        return Merge(surviving=surviving, retired=retired)

    def _encounter(self, segments: list[Seg]) -> None:
        pv1 = next((s for s in segments if s.id == "PV1"), None)
        if pv1 is None or (self.type == "ADT" and self.trigger in _PERSON_ONLY):
            return
        pv2 = next((s for s in segments if s.id == "PV2"), None)
        res = encounter(self.ctx, pv1, pv2, self.message.first("EVN"), self.trigger, self.patient_ref)
        ident = (res.get("identifier") or [None])[0]
        if ident is not None:
            self.visit = ident["value"]
            known = self.encounters.get((ident["system"], ident["value"]))
            self.encounter_ref = known or self.builder.put(res, ident["system"], ident["value"])
            self.encounters[(ident["system"], ident["value"])] = self.encounter_ref
        elif "period" in res:
            self.encounter_ref = self.builder.create(res)
        # A PV1 with neither visit number nor dates identifies nothing: no Encounter for it.

    # -- the segments in order -----------------------------------------------------------

    def _walk(self, segments: list[Seg]) -> None:
        orc: Seg | None = None
        group = self._patient_group()
        note_target: dict[str, Any] | None = None
        for seg in segments:
            sid = seg.id
            if sid == "NK1":
                self._related_person(seg)
                note_target = None
            elif sid == "DG1":
                self._condition(seg)
                note_target = None
            elif sid == "AL1":
                self._allergy(seg)
                note_target = None
            elif sid == "ORC":
                orc, group, note_target = seg, self._patient_group(), None
            elif sid == "OBR":
                group = self._report(orc, seg)
                note_target = group.resource
            elif sid == "RXA":
                group = self._immunization(orc, seg)
                note_target = group.resource
            elif sid == "RXR" and group.resource is not None and group.resource["resourceType"] == "Immunization":
                add_route(self.ctx, group.resource, seg)
            elif sid == "OBX":
                note_target = self._observation(group, seg)
            elif sid == "SPM":
                self._specimen(group, seg)
                note_target = None
            elif sid == "NTE":
                if note_target is not None:
                    self.notes.add(note_target, seg)
            elif sid in ("PV1", "PV2", "MRG"):
                note_target = None

    def _patient_group(self) -> Group:
        base = f"visit:{self.visit}" if self.visit else f"msg:{self.control_id}/{self.patient_label}"
        group = Group(key=base)
        self.groups.append(group)
        return group

    def _related_person(self, nk1: Seg) -> None:
        res = related_person(self.ctx, nk1, self.patient_ref)
        if res is not None:
            self.builder.keyed(res, "related-person", f"{self.patient_label}/nk1/{nk1.get(1) or nk1.seq}")

    def _condition(self, dg1: Seg) -> None:
        res = condition(self.ctx, dg1, self.patient_ref, self.encounter_ref)
        if res is not None:
            self.builder.keyed(res, "condition", condition_key(dg1, self.visit, self.patient_label))

    def _allergy(self, al1: Seg) -> None:
        res = allergy(self.ctx, al1, self.patient_ref, self.encounter_ref)
        if res is not None:
            self.builder.keyed(res, "allergy-intolerance", allergy_key(al1, self.patient_label))

    def _report(self, orc: Seg | None, obr: Seg) -> Group:
        res = diagnostic_report(self.ctx, obr, self.patient_ref, self.encounter_ref)
        found = order_key(orc, obr)
        value = found[1] if found else f"msg:{self.control_id}/obr{obr.seq}"
        ref = self.builder.keyed(res, "diagnostic-report", value)
        if found:
            res["identifier"][0]["type"] = {"coding": [{"system": _V2_0203, "code": found[0]}]}
        group = Group(key=res["identifier"][0]["value"], resource=res, ref=ref,
                      effective=res.get("effectiveDateTime") or res.get("effectivePeriod", {}).get("start"),
                      category="laboratory" if self.type == "ORU" else None)
        self.groups.append(group)
        return group

    def _immunization(self, orc: Seg | None, rxa: Seg) -> Group:
        res = immunization(self.ctx, rxa, self.patient_ref, self.encounter_ref)
        ref = self.builder.keyed(res, "immunization", immunization_key(orc, rxa, self.patient_label))
        group = Group(key=res["identifier"][0]["value"], resource=res, ref=ref,
                      effective=res.get("occurrenceDateTime"))
        self.groups.append(group)
        return group

    def _observation(self, group: Group, obx: Seg) -> dict[str, Any] | None:
        group.obx_count += 1
        res = observation(self.ctx, obx, self.patient_ref, self.encounter_ref, group.effective, group.category)
        if res is None:
            return None
        if group.resource is not None and group.resource["resourceType"] == "Immunization" and group.ref:
            res["partOf"] = [{"reference": group.ref}]
        set_id = obx.get(1) if obx.get(1).isdigit() else str(group.obx_count)
        key = f"{group.key}/" + (f"spm{group.spm_count}/" if group.spm_count else "") + f"obx{set_id}"
        if obx.get(4):
            key += f".{obx.get(4)}"
        ref = self.builder.keyed(res, "observation", key)
        group.results.append(res)
        group.result_refs.append(ref)
        return res

    def _specimen(self, group: Group, spm: Seg) -> None:
        group.spm_count += 1
        value = specimen_key(spm) or f"{group.key}/spm{spm.get(1) or group.spm_count}"
        ref = self.specimen_refs.get(value)
        if ref is None:
            ref = self.builder.keyed(specimen(self.ctx, spm, self.patient_ref), "specimen", value)
            self.specimen_refs[value] = ref
        if ref not in group.specimens:
            group.specimens.append(ref)

    def _finish(self) -> None:
        self.notes.write()
        for group in self.groups:
            if group.specimens:
                for obs in group.results:
                    obs.setdefault("specimen", {"reference": group.specimens[0]})
            if group.resource is None or group.resource["resourceType"] != "DiagnosticReport":
                continue
            if group.result_refs:
                group.resource["result"] = [{"reference": r} for r in group.result_refs]
            if group.specimens:
                group.resource["specimen"] = [{"reference": r} for r in group.specimens]


def to_fhir(message: ParsedMessage, sender: SenderProfile) -> Mapped:
    """Map one parsed message to a transaction Bundle, located issues and normalization notes."""
    return _Mapper(message, sender).run()
