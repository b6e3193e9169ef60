"""``Patient.link`` entries that the master patient index manages (pure functions over dicts).

The MPI writes each link it makes into both Patient records
(https://hl7.org/fhir/R4B/patient-definitions.html#Patient.link: ``other`` and ``type`` are
required) and marks it with the :data:`MPI_LINK_URL` extension, whose ``valueString`` says why
(``"<kind> <score>"``, e.g. ``"national-id 1"``, ``"score 0.9931"``, ``"merge 1"``). Links
without the extension belong to the sender and are left alone.

A hospital that re-sends its record (PUT, conditional PUT, PATCH, an HL7 ADT^A08) does not know
the hub's links: :func:`carry_over` keeps them in the new version, so they are removed only
through the MPI (``healthhub mpi unlink``), never by omission.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: The hub's extension on a ``Patient.link`` that the MPI made and keeps up.
MPI_LINK_URL = "http://healthhub.dev/fhir/StructureDefinition/mpi-link"


def mpi_link(other_id: str, link_type: str, kind: str, score: float) -> dict[str, Any]:
    """A ``Patient.link`` to ``Patient/other_id`` marked as the MPI's, saying why it was made."""
    return {"extension": [{"url": MPI_LINK_URL, "valueString": f"{kind} {score:g}"}],
            "other": {"reference": f"Patient/{other_id}"}, "type": link_type}


def is_mpi_link(link: Any) -> bool:
    """Whether a ``Patient.link`` entry carries the MPI's extension."""
    return isinstance(link, dict) and any(
        isinstance(ext, dict) and ext.get("url") == MPI_LINK_URL for ext in link.get("extension") or [])


def linked_other(link: Any) -> str | None:
    """The Patient id a ``Patient.link`` entry points at (``Patient/<id>``), else None."""
    other = link.get("other") if isinstance(link, dict) else None
    ref = other.get("reference") if isinstance(other, dict) else None
    if isinstance(ref, str) and ref.startswith("Patient/") and "/" not in ref[len("Patient/"):]:
        return ref[len("Patient/"):]
    return None


def carry_over(current: dict[str, Any] | None, incoming: dict[str, Any]) -> dict[str, Any]:
    """``incoming`` with the MPI links of the ``current`` version that it lacks put back.

    When the incoming body holds exactly the current MPI links it is returned as it is (a
    client that re-sends what it read changes nothing). Otherwise its own links stay in order,
    except MPI-marked ones (a client cannot make or alter them) and ones to the same record
    with the same type as a current MPI link, and the current MPI links follow.
    """
    kept = [link for link in (current or {}).get("link") or [] if is_mpi_link(link)]
    body = incoming.get("link") or []
    if not isinstance(body, list) or [link for link in body if is_mpi_link(link)] == kept:
        return incoming
    managed = {_key(link) for link in kept}
    links = [link for link in body if not is_mpi_link(link) and _key(link) not in managed] + kept
    out = {k: v for k, v in incoming.items() if k != "link"}
    if links:
        out["link"] = links
    return out


def with_links(content: dict[str, Any], add: Iterable[dict[str, Any]] = (),
               remove: Iterable[str] = ()) -> dict[str, Any]:
    """``content`` with the MPI links to the ids in ``remove`` dropped and ``add`` appended
    (replacing an MPI link to the same record); the sender's own links are kept."""
    new = list(add)
    dropped = set(remove) | {linked_other(link) for link in new}
    links = [link for link in content.get("link") or []
             if not (is_mpi_link(link) and linked_other(link) in dropped)] + new
    out = {k: v for k, v in content.items() if k != "link"}
    if links:
        out["link"] = links
    return out


def _key(link: Any) -> tuple[Any, Any]:
    if not isinstance(link, dict):
        return (None, None)
    other = link.get("other")
    return (other.get("reference") if isinstance(other, dict) else None, link.get("type"))
