"""Which search parameters can hold only one value (from the R4B element definitions)."""
from __future__ import annotations

import pytest

from healthhub.search.cardinality import element_path, single_valued
from healthhub.search.registry import default_registry


@pytest.mark.parametrize("rtype,code,single", [
    ("Encounter", "date", True),             # Encounter.period, 0..1
    ("Observation", "date", True),           # the choice Observation.effective[x]
    ("Condition", "onset-date", True),       # onset.as(dateTime) | onset.as(Period): one choice element
    ("Patient", "birthdate", True),
    ("Patient", "death-date", True),
    ("Encounter", "location-period", False),  # Encounter.location is 0..*
    ("Goal", "target-date", False),          # Goal.target is 0..*
    ("Patient", "name", False),
    ("Observation", "combo-code", False),    # a union of two different elements
])
def test_single_valued(rtype, code, single):
    assert single_valued(rtype, default_registry().get(rtype, code)) is single


@pytest.mark.parametrize("branch,path", [
    ("(Observation.value as Quantity)", "Observation.value"),
    ("Condition.onset.as(Period)", "Condition.onset"),
    ("Patient.telecom.where(system='phone')", "Patient.telecom"),
    ("Bundle.entry[0].resource", None),
    ("Patient.extension('http://x').value", None),
])
def test_element_path(branch, path):
    assert element_path(branch) == path
