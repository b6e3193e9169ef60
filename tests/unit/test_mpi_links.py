"""The MPI's ``Patient.link`` upkeep (pure): marking, carrying over through a hospital's update."""
from __future__ import annotations

from healthhub import resources
from healthhub.mpi.links import MPI_LINK_URL, carry_over, is_mpi_link, mpi_link, with_links

OWN = {"other": {"reference": "RelatedPerson/r1"}, "type": "seealso"}  # the hospital's own link


def patient(*links: dict) -> dict:
    p = {"resourceType": "Patient", "id": "a", "name": [{"family": "Koepp"}]}
    if links:
        p["link"] = list(links)
    return p


def test_an_mpi_link_is_a_valid_marked_patient_link():
    link = mpi_link("b", "seealso", "score", 0.99312)
    assert link["other"] == {"reference": "Patient/b"} and link["type"] == "seealso"
    assert link["extension"] == [{"url": MPI_LINK_URL, "valueString": "score 0.99312"}]
    assert is_mpi_link(link) and not is_mpi_link(OWN)
    resources.validate(patient(link, OWN))


def test_carry_over_puts_back_what_the_body_lacks():
    hub = mpi_link("b", "seealso", "national-id", 1.0)
    current = patient(OWN, hub)
    assert carry_over(current, patient())["link"] == [hub]
    assert carry_over(current, patient(OWN))["link"] == [OWN, hub]
    assert carry_over(current, current) is current  # re-sent as read: unchanged, in its order
    assert carry_over(patient(), patient(OWN)) == patient(OWN)  # nothing of the hub's to keep


def test_carry_over_refuses_forged_or_altered_hub_links():
    hub = mpi_link("b", "seealso", "national-id", 1.0)
    forged = mpi_link("z", "seealso", "manual", 1.0)
    altered = {**hub, "type": "replaced-by"}
    unmarked = {"other": {"reference": "Patient/b"}, "type": "seealso"}
    assert carry_over(patient(hub), patient(forged, altered))["link"] == [hub]
    assert carry_over(patient(hub), patient(unmarked))["link"] == [hub]
    assert "link" not in carry_over(patient(), patient(forged))


def test_with_links_replaces_and_removes_only_hub_links():
    old = mpi_link("b", "seealso", "score", 0.99)
    new = mpi_link("b", "replaces", "merge", 1.0)
    assert with_links(patient(OWN, old), [new])["link"] == [OWN, new]
    assert with_links(patient(OWN, old), remove=["b"])["link"] == [OWN]
    assert "link" not in with_links(patient(old), remove=["b"])
