"""A small, exact UCUM converter to canonical units, for quantity search.

Quantity search compares values in comparable units: ``100 mg/dL`` and ``1 g/L`` are the same
concentration (https://hl7.org/fhir/R4B/search.html#quantity). ``canonical`` turns a value and a
UCUM code (https://ucum.org/ucum) into a value in base units and a canonical code such as
``g.m-3``, and answers None whenever it is not sure, so the caller falls back to the code as sent.

What it knows, on purpose no more:

- the metric prefixes k h da d c m u n p f (and M G for the rare large units) on the metric atoms
  g, m, s, L/l (= dm3), mol, eq, K and the arbitrary ``[IU]``/``[iU]``;
- the time units min, h, d, wk (``mo`` and ``a`` are left out: calendar months and years are
  not one fixed duration to a reader, whatever UCUM's mean Julian values say);
- ``%`` (= 10*-2), integer factors and ``10*n`` / ``10^n``;
- products and quotients with ``.`` and ``/`` (left to right, as UCUM reads them), and integer
  exponents (``m2``, ``s-1``).

``mol`` and ``eq`` stay separate base units (UCUM makes eq = mol, but mEq and mmol of a divalent
ion differ clinically); arbitrary units (``[IU]``) compare only with themselves. ``Cel`` and
``mm[Hg]`` are returned as they are (no conversion: Celsius is not a ratio scale and mm[Hg] is the
only pressure unit in use for it). Annotations (``{score}``), parentheses, other special units
and anything unknown give None.

Factors that are powers of ten are applied with ``Decimal.scaleb``, so the value keeps its
significant digits (``100 mg/dL`` → ``1.00E+3 g.m-3``, still "3 significant digits"); other
factors (min, h, d, wk) are multiplied exactly.
"""
from __future__ import annotations

import re
from decimal import Context, Decimal
from fractions import Fraction
from functools import lru_cache

_CTX = Context(prec=28)

# prefix → power of ten (UCUM is case-sensitive: "m" milli, "M" mega)
_PREFIXES: dict[str, int] = {
    "da": 1, "h": 2, "k": 3, "M": 6, "G": 9,
    "d": -1, "c": -2, "m": -3, "u": -6, "n": -9, "p": -12, "f": -15,
}
# metric atom → (power of ten, base units) ; prefixes allowed
_METRIC: dict[str, tuple[int, dict[str, int]]] = {
    "g": (0, {"g": 1}),
    "m": (0, {"m": 1}),
    "s": (0, {"s": 1}),
    "L": (-3, {"m": 3}),
    "l": (-3, {"m": 3}),
    "mol": (0, {"mol": 1}),
    "eq": (0, {"eq": 1}),
    "K": (0, {"K": 1}),
    "[IU]": (0, {"[IU]": 1}),
    "[iU]": (0, {"[IU]": 1}),
}
# non-metric atom → (exact non-decimal factor, power of ten, base units) ; no prefixes
_PLAIN: dict[str, tuple[Fraction, int, dict[str, int]]] = {
    "min": (Fraction(6), 1, {"s": 1}),
    "h": (Fraction(36), 2, {"s": 1}),
    "d": (Fraction(864), 2, {"s": 1}),
    "wk": (Fraction(6048), 2, {"s": 1}),
    "%": (Fraction(1), -2, {}),
}
# atoms that a prefix + atom reading would get wrong; None = known but not converted
_REFUSED = frozenset({"cd", "mo", "a", "Pa", "Gy", "Hz", "dB", "cal", "kat", "bar", "mho"})
_KEPT = frozenset({"Cel", "mm[Hg]"})

_TOKEN = re.compile(r"([./])|([^./]+)")
_COMPONENT = re.compile(r"^(?P<atom>\[[A-Za-z]+\]|%|[A-Za-z]+(?:\[[A-Za-z]+\])?)(?P<exp>[+-]?\d+)?$")
_POWER10 = re.compile(r"^10[*^](?P<exp>[+-]?\d+)$")


class _Unit:
    __slots__ = ("factor", "exp10", "dims")

    def __init__(self, factor: Fraction, exp10: int, dims: dict[str, int]) -> None:
        self.factor = factor
        self.exp10 = exp10
        self.dims = dims

    def combine(self, other: _Unit, sign: int) -> _Unit:
        dims = dict(self.dims)
        for base, n in other.dims.items():
            total = dims.get(base, 0) + sign * n
            if total:
                dims[base] = total
            else:
                dims.pop(base, None)
        factor = self.factor * other.factor if sign > 0 else self.factor / other.factor
        return _Unit(factor, self.exp10 + sign * other.exp10, dims)


def _component(text: str) -> _Unit | None:
    if text.isdigit():
        return _Unit(Fraction(int(text)), 0, {})
    m = _POWER10.match(text)
    if m:
        return _Unit(Fraction(1), int(m["exp"]), {})
    m = _COMPONENT.match(text)
    if not m:
        return None
    atom, exp = m["atom"], int(m["exp"]) if m["exp"] else 1
    unit = _atom(atom)
    if unit is None:
        return None
    dims = {base: n * exp for base, n in unit.dims.items()}
    return _Unit(unit.factor ** exp, unit.exp10 * exp, dims)


def _atom(atom: str) -> _Unit | None:
    if atom in _REFUSED:
        return None
    if atom in _PLAIN:
        factor, exp10, dims = _PLAIN[atom]
        return _Unit(factor, exp10, dict(dims))
    if atom in _METRIC:
        exp10, dims = _METRIC[atom]
        return _Unit(Fraction(1), exp10, dict(dims))
    for prefix in ("da", *(p for p in _PREFIXES if p != "da")):
        rest = atom[len(prefix):]
        if atom.startswith(prefix) and rest in _METRIC:
            exp10, dims = _METRIC[rest]
            return _Unit(Fraction(1), exp10 + _PREFIXES[prefix], dict(dims))
    return None


@lru_cache(maxsize=1024)
def _parse(code: str) -> tuple[Fraction, int, str] | None:
    """(exact factor, power of ten, canonical code) of a UCUM code, or None."""
    if not code or any(ch in code for ch in "{}() \t"):
        return None
    unit = _Unit(Fraction(1), 0, {})
    sign = 1
    expect_component = True
    for op, comp in _TOKEN.findall(code):
        if op:
            if expect_component and unit.dims == {} and op == "/" and unit.factor == 1 and unit.exp10 == 0:
                sign = -1  # leading "/": "/min"
                continue
            if expect_component:
                return None
            sign = 1 if op == "." else -1
            expect_component = True
            continue
        part = _component(comp)
        if part is None:
            return None
        unit = unit.combine(part, sign)
        expect_component = False
    if expect_component:
        return None
    return unit.factor, unit.exp10, _format(unit.dims)


def _format(dims: dict[str, int]) -> str:
    if not dims:
        return "1"
    return ".".join(base if n == 1 else f"{base}{n}" for base, n in sorted(dims.items(), key=lambda kv: (kv[1] < 0, kv[0])))


def canonical(value: Decimal, code: str) -> tuple[Decimal, str] | None:
    """``value`` ``code`` in canonical base units, e.g. ``(Decimal('100'), 'mg/dL')`` →
    ``(Decimal('1.00E+3'), 'g.m-3')``; None when the code is not one this module is sure of."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        return None
    if code in _KEPT:
        return value, code
        return None
    parsed = _parse(code)
    if parsed is None:
        return None
    factor, exp10, unit = parsed
    result = value
    if factor != 1:
        result = _CTX.divide(_CTX.multiply(result, Decimal(factor.numerator)), Decimal(factor.denominator))
    return result.scaleb(exp10, _CTX), unit
