"""What every segment map shares: the sender, the issues and notes found so far."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from healthhub.ingest.normalize import Note, SenderProfile, hl7_date, hl7_datetime

from .model import Located, ParsedMessage, Seg

_MAX_TEXT = 300


@dataclass
class Context:
    """The state of one message's mapping."""

    message: ParsedMessage
    sender: SenderProfile
    issues: list[Located] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    # -- problems ----------------------------------------------------------------------

    def issue(self, severity: str, seg: Seg | str, fld: int | None, code: str, text: str,
              component: int | None = None) -> None:
        """Record a located problem (``seg`` a segment, or a segment id for a missing one)."""
        if isinstance(seg, Seg):
            segment, sequence = seg.id, seg.seq
        else:
            segment, sequence = seg, 1
        if len(text) > _MAX_TEXT:  # a quoted value can be megabytes long; the ACK needs a line
            text = text[: _MAX_TEXT - 1] + "…"
        self.issues.append(Located(severity=severity, segment=segment, sequence=sequence, field=fld,
                                   component=component, code=code, text=text))

    def error(self, seg: Seg | str, fld: int | None, code: str, text: str, component: int | None = None) -> None:
        """Record an error: the message will not be stored."""
        self.issue("E", seg, fld, code, text, component)

    def warn(self, seg: Seg | str, fld: int | None, code: str, text: str, component: int | None = None) -> None:
        """Record a warning: the message is stored, the sender is told."""
        self.issue("W", seg, fld, code, text, component)

    def note(self, note: Note | None, location: str) -> None:
        """Keep a normalization note, located."""
        if note is not None:
            self.notes.append(note if note.location else replace(note, location=location))

    # -- dates -------------------------------------------------------------------------

    def datetime(self, seg: Seg, fld: int, value: str | None = None, *, severity: str = "W") -> str | None:
        """A DTM field as a FHIR dateTime; a bad one is a located issue (102) and gives None."""
        text = seg.get(fld) if value is None else value
        if not text:
            return None
        out, note = hl7_datetime(text, self.sender.timezone, location=where(seg, fld))
        if out is None:
            self.issue(severity, seg, fld, "102", note.message if note else f"{text!r} is not a valid date/time")
        return out

    def date(self, seg: Seg, fld: int, *, severity: str = "W") -> str | None:
        """A DT/DTM field as a FHIR date (time dropped); a bad one is a located issue (102)."""
        text = seg.get(fld)
        if not text:
            return None
        out, note = hl7_date(text, location=where(seg, fld))
        if out is None:
            self.issue(severity, seg, fld, "102", note.message if note else f"{text!r} is not a valid date")
        return out

    def instant(self, seg: Seg, fld: int) -> str | None:
        """A DTM field as a FHIR instant (seconds and offset required), else None."""
        value = self.datetime(seg, fld)
        # https://hl7.org/fhir/R4B/datatypes.html#instant: a date alone is not an instant.
        return value if value is not None and len(value) >= 20 else None


def where(seg: Seg | str, fld: int, rep: int = 1) -> str:
    """``PID-3[2]``: a Note location (repetition in brackets, as normalize documents it)."""
    name = seg.id if isinstance(seg, Seg) else seg
    return f"{name}-{fld}" + (f"[{rep}]" if rep > 1 else "")
