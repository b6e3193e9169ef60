"""healthhub.search.ucum: canonical units for quantity search."""
from __future__ import annotations

from decimal import Decimal

import pytest

from healthhub.search.ucum import canonical
from healthhub.search.values import number_range


def D(text: str) -> Decimal:
    return Decimal(text)


def test_mass_concentrations_meet():
    a = canonical(D("100"), "mg/dL")
    b = canonical(D("1"), "g/L")
    assert a is not None and b is not None
    assert a == b  # Decimal equality: 1.00E+3 == 1E+3
    assert a[1] == "g.m-3" and a[0] == 1000


def test_kilogram_is_thousand_grams():
    assert canonical(D("1"), "kg") == canonical(D("1000"), "g") == (Decimal(1000), "g")


def test_molar_concentration_is_mol_per_cubic_metre():
    assert canonical(D("5"), "mmol/L") == (D("5"), "mol.m-3")
    assert canonical(D("5000"), "umol/L") == canonical(D("5"), "mmol/L")
    assert canonical(D("5"), "mol/m3") == (D("5"), "mol.m-3")


@pytest.mark.parametrize("code", ["{score}", "mL/min/{1.73_m2}", "mo", "a", "cd", "mEq/L", "foo", "", "kg//m",
                                  "beats/minute", "mmHg", "[degF]", "(kg)", "/", "kg/"])
def test_unknown_or_ambiguous_units_give_none(code):
    assert canonical(D("1"), code) is None


def test_powers_of_ten_keep_precision():
    value, code = canonical(D("100"), "mg/dL")
    assert code == "g.m-3"
    assert number_range(value) == (D("995"), D("1005"))  # 100 ± 0.5 mg/dL


@pytest.mark.parametrize(("value", "code", "expected"), [
    ("8.5", "10*3/uL", ("8.5E+12", "m-3")),
    ("1", "10^3/uL", ("1E+12", "m-3")),
    ("25", "kg/m2", ("2.5E+4", "g.m-2")),
    ("90", "fL", ("9.0E-17", "m3")),
    ("1.5", "min", ("90", "s")),
    ("2", "h", ("7200", "s")),
    ("1", "d", ("86400", "s")),
    ("1", "wk", ("604800", "s")),
    ("50", "%", ("0.5", "1")),
    ("3", "m[IU]/mL", ("3000", "[IU].m-3")),
    ("2", "meq/L", ("2", "eq.m-3")),
    ("1", "/min", (str(Decimal(1) / Decimal(60)), "s-1")),
    ("1", "m/s2", ("1", "m.s-2")),
    ("4", "cm2", ("0.0004", "m2")),
    ("1", "kg.m/s2", ("1000", "g.m.s-2")),
    ("7", "dag", ("70", "g")),
])
def test_conversions(value, code, expected):
    result = canonical(D(value), code)
    assert result is not None
    assert result == (D(expected[0]), expected[1])


def test_kept_units_are_not_converted():
    assert canonical(D("120"), "mm[Hg]") == (D("120"), "mm[Hg]")
    assert canonical(D("37.5"), "Cel") == (D("37.5"), "Cel")


def test_left_to_right_division():
    # UCUM reads "/" and "." left to right: mg/kg/d = (mg / kg) / d
    assert canonical(D("86400"), "mg/kg/d") == (D("1E-6"), "s-1")


def test_integers_and_non_finite_values():
    assert canonical(1, "kg") == (D("1000"), "g")
    assert canonical(D("NaN"), "kg") is None
