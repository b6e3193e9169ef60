"""Synthetic surveillance case reports for the demo (``make run``): enough rows across provinces,
districts, ages, sexes and weeks that the statistics and the dashboard show real curves and
tables on first start.

SYNTHETIC DATA: every row is generated here from a fixed seed (the same file every time); no
row describes a real person. Case ids start ``SYN-``, family names are ``Synthetic``, the
national ids are generated numbers with a valid check digit. The rows go through the ordinary
CSV case-report ingest (archive, validation, ConceptMap, Provenance, patient matching), sent
by the demo hospitals H01–H03.
"""
from __future__ import annotations

import csv
import io
import random
from datetime import date, timedelta

SEED = 2026
#: Province → (districts, the demo hospital that reports its cases).
PLACES: dict[str, tuple[tuple[str, ...], str]] = {
    "Bangkok": (("Bang Rak", "Chatuchak", "Pathum Wan", "Bang Kapi"), "H01"),
    "Chiang Mai": (("Mueang Chiang Mai", "San Sai", "Hang Dong"), "H02"),
    "Khon Kaen": (("Mueang Khon Kaen", "Ban Phai", "Chum Phae"), "H03"),
}
#: ICD-10 code → (cases, peak week of 2026, spread in weeks): dengue in the rainy season,
#: influenza early in the year, a smaller COVID-19 wave.
CONDITIONS: dict[str, tuple[int, int, float]] = {
    "A90": (900, 30, 6.0),  # dengue fever
    "A91": (150, 31, 5.0),  # dengue haemorrhagic fever
    "J10": (300, 8, 4.0),   # influenza, virus identified
    "U07.1": (200, 18, 7.0),  # COVID-19
}
YEAR_START = date(2025, 12, 29)  # Monday of ISO week 2026-W01
WEEKS = 44
HEADER = ("case_id", "hospital_code", "national_id", "mrn", "family_name", "given_name", "sex", "birth_date",
          "province", "district", "condition_code", "onset_date", "diagnosis_date", "outcome")
_GIVEN = ("Anong", "Boon", "Chai", "Dao", "Kanya", "Lek", "Mali", "Niran", "Pim", "Somchai", "Suda", "Wichai")


def rows() -> list[dict[str, str]]:
    """The demo case reports (deterministic)."""
    rng = random.Random(SEED)
    out: list[dict[str, str]] = []
    provinces = list(PLACES)
    for icd, (cases, peak, spread) in CONDITIONS.items():
        for _ in range(cases):
            n = len(out) + 1
            province = rng.choices(provinces, weights=(5, 3, 2))[0]
            districts, hospital = PLACES[province]
            week = min(WEEKS - 1, max(0, round(rng.gauss(peak, spread))))
            onset = YEAR_START + timedelta(weeks=week, days=rng.randrange(7))
            age = _age(rng, icd)
            birth = onset - timedelta(days=age * 365 + rng.randrange(365))
            sex = rng.choice("FM")
            outcome = rng.choices(("recovered", "under-treatment", "died"), weights=(90, 9, 1))[0]
            out.append({
                "case_id": f"SYN-{n:06d}", "hospital_code": hospital, "national_id": national_id(rng),
                "mrn": f"SYN{n:06d}", "family_name": "Synthetic", "given_name": rng.choice(_GIVEN), "sex": sex,
                "birth_date": birth.isoformat(), "province": province, "district": rng.choice(districts),
                "condition_code": icd, "onset_date": onset.isoformat(),
                "diagnosis_date": (onset + timedelta(days=rng.randrange(1, 5))).isoformat(), "outcome": outcome,
            })
    return out


def as_csv() -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows())
    return out.getvalue().encode()


def national_id(rng: random.Random) -> str:
    """12 random digits (not starting 0) and the check digit of a 13-digit citizen id."""
    digits = [rng.randrange(1, 9)] + [rng.randrange(10) for _ in range(11)]
    check = (11 - sum(d * (13 - i) for i, d in enumerate(digits)) % 11) % 10
    return "".join(map(str, digits)) + str(check)


def _age(rng: random.Random, icd: str) -> int:
    """Dengue weighs on children and young adults, influenza and COVID-19 on all ages."""
    if icd.startswith("A9"):
        return min(89, int(rng.expovariate(1 / 18)))
    return rng.randrange(0, 90)
