"""A labelled evaluation set for patient matching, and the evaluation that scores a matcher on it.

Persons come from Synthea: each real Synthea Patient is one person, and more distinct persons
are synthesised deterministically (seeded) by recombining Synthea's own given and family names
(Patients' and Practitioners'), street names, city/postal-code pairs and phone-number parts.
Each person is sent by 1–4 simulated hospitals as FHIR Patients carrying the errors hospitals
really make (typos, nicknames, dropped middle names, swapped names, missing fields,
day/month swaps, moves, new phones, marriage) at the rates in :data:`RATES`, plus hard
negatives: twins, namesakes and juniors, each a person of their own.

:func:`evaluate` blocks with :func:`~healthhub.ingest.matching.blocking_keys`, scores every
candidate pair and counts pairs (the standard pairwise measure); the transitive closure of the
predicted links is reported beside it. Pure: files in, numbers out; no database.
"""
from __future__ import annotations

import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from healthhub.ingest.matching import (
    AUTO_LINK,
    REVIEW,
    Features,
    Match,
    blocking_keys,
    features,
    score,
)
from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM

#: Per-record (or per-person, where said) chance of each perturbation.
RATES: Mapping[str, float] = {
    "national-id-missing": 0.25,  # the hospital did not record or send it
    "national-id-typo": 0.01,  # one digit wrong (the check digit catches most)
    "given-typo": 0.05,  # insert, delete, substitute or transpose one letter
    "family-typo": 0.05,
    "nickname": 0.05,  # when the first name has a common short form
    "middle-dropped": 0.40,  # when the person has a middle name
    "middle-initial": 0.10,
    "names-swapped": 0.02,  # given in the family field and the other way round
    "name-text-only": 0.03,  # HumanName.text only ("Given Family" or "FAMILY, Given")
    "casing": 0.20,  # UPPER, lower or stray spaces
    "birth-date-missing": 0.03,
    "birth-date-transposed": 0.02,  # day and month swapped (when the day is ≤ 12)
    "birth-date-digit": 0.02,  # one digit of the date wrong
    "birth-date-year-only": 0.01,
    "gender-missing": 0.03,
    "address-missing": 0.10,
    "address-format": 0.20,  # Street → St, upper case, …
    "phone-missing": 0.20,
    "email-missing": 0.50,  # of persons who have an e-mail address
    "moved": 0.15,  # per person: a second address, each record at one of the two
    "phone-changed": 0.10,  # per person: a second phone number
    "married": 0.08,  # per adult woman: a new family name in some records
    "maiden-kept": 0.40,  # of records after the marriage: the maiden name as a second name
    "email": 0.30,  # per person: has an e-mail address
    "middle-name": 0.35,  # per synthetic person: has a middle name
    "twin": 0.03,  # per person: a twin (same family, birth date, address, phone)
    "namesake": 0.03,  # per person: another person with the same name, born another day
    "junior": 0.01,  # per man: a son with his name at his address
}
#: How many hospitals hold a person: 1, 2, 3 or 4 records.
RECORDS_PER_PERSON = (0.35, 0.35, 0.18, 0.12)

# Short forms the simulated registration clerks use. Written apart from the matcher's table on
# purpose: a few (mary → polly, margaret → daisy, john → hank, …) are ones the matcher does not know.
_EVAL_NICKNAMES = {
    "william": ("bill", "billy", "will"), "robert": ("bob", "bobby", "rob"), "richard": ("rick", "dick"),
    "james": ("jim", "jimmy"), "john": ("johnny", "jack", "hank"), "joseph": ("joe",), "michael": ("mike",),
    "thomas": ("tom", "tommy"), "charles": ("charlie", "chuck"), "christopher": ("chris",),
    "daniel": ("dan", "danny"), "david": ("dave",), "edward": ("ed", "eddie", "ted"),
    "elizabeth": ("liz", "beth", "betty", "bess"), "margaret": ("maggie", "peggy", "daisy"),
    "katherine": ("kate", "kathy"), "catherine": ("cathy", "kate"), "patricia": ("pat", "patty"),
    "jennifer": ("jenny", "jen"), "susan": ("sue", "suzy"), "deborah": ("debbie",), "dorothy": ("dot", "dolly"),
    "alexander": ("alex",), "alexandra": ("alex", "sasha"), "anthony": ("tony",), "antonio": ("tony", "toni"),
    "andrew": ("andy",), "benjamin": ("ben",), "frederick": ("fred",), "gregory": ("greg",),
    "harold": ("harry",), "henry": ("harry", "hank"), "lawrence": ("larry",), "leonard": ("leo", "len"),
    "matthew": ("matt",), "nicholas": ("nick",), "peter": ("pete",), "raymond": ("ray",),
    "ronald": ("ron", "ronnie"), "samuel": ("sam",), "stephen": ("steve",), "steven": ("steve",),
    "timothy": ("tim",), "walter": ("walt", "wally"), "albert": ("al", "bert"), "alfred": ("alfie",),
    "abigail": ("abby",), "rebecca": ("becky",), "victoria": ("vicky", "tori"), "jessica": ("jess",),
    "barbara": ("barb", "babs"), "judith": ("judy",), "kimberly": ("kim",), "pamela": ("pam",),
    "teresa": ("terry", "tess"), "virginia": ("ginny",), "kenneth": ("ken", "kenny"), "donald": ("don",),
    "douglas": ("doug",), "gerald": ("jerry",), "eugene": ("gene",), "clifford": ("cliff",),
    "bernard": ("bernie",), "francisco": ("paco", "pancho"), "jose": ("pepe",), "guadalupe": ("lupe",),
    "manuel": ("manny",), "eduardo": ("lalo",), "alberto": ("beto",), "roberto": ("beto",),
    "ignacio": ("nacho",), "isabel": ("bella",), "mary": ("molly", "polly"), "sarah": ("sally",),
    "vincent": ("vince",), "arthur": ("art",), "jacob": ("jake",), "jeffrey": ("jeff",), "joshua": ("josh",),
    "philip": ("phil",), "randall": ("randy",), "reginald": ("reggie",), "russell": ("russ",),
    "stanley": ("stan",), "theodore": ("ted", "teddy"), "nathaniel": ("nate",), "zachary": ("zack",),
    "augustus": ("gus",), "augustine": ("gus",), "mitchell": ("mitch",), "rudolph": ("rudy",),
}
_STREET_SHORT = {"Street": "St", "Avenue": "Ave", "Road": "Rd", "Drive": "Dr", "Lane": "Ln",
                 "Boulevard": "Blvd", "Court": "Ct", "Suite": "Ste", "Apartment": "Apt", "Place": "Pl"}
_FIRST_BIRTH, _LAST_BIRTH = date(1930, 1, 1), date(2023, 12, 31)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# -- sources ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sources:
    """What the synthetic persons are recombined from, all taken from Synthea files."""

    patients: tuple[Mapping[str, Any], ...]
    #: gender → given names (Patients' and Practitioners', Synthea's number suffixes removed).
    given: Mapping[str, tuple[str, ...]]
    families: tuple[str, ...]
    #: Street names without house numbers ("Lockman Row").
    streets: tuple[str, ...]
    #: (city, postal code, state) as they occur together.
    places: tuple[tuple[str, str, str], ...]
    #: Ten-digit phone numbers.
    phones: tuple[str, ...]


def load_sources(root: Path) -> Sources:
    """Read every Synthea Bundle under ``root`` (with orjson) and collect names, places, phones."""
    patients: list[Mapping[str, Any]] = []
    given: dict[str, set[str]] = {"male": set(), "female": set()}
    families: set[str] = set()
    streets: set[str] = set()
    places: set[tuple[str, str, str]] = set()
    phones: set[str] = set()
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        doc = orjson.loads(path.read_bytes())
        for entry in doc.get("entry") or []:
            resource = entry.get("resource") or {}
            rtype = resource.get("resourceType")
            if rtype == "Patient":
                patients.append(resource)
            if rtype in ("Patient", "Practitioner"):
                gender = resource.get("gender")
                for name in resource.get("name") or []:
                    if family := _clean(name.get("family")):
                        families.add(family)
                    if gender in given:
                        given[gender].update(g for g in map(_clean, name.get("given") or []) if g)
            for address in _addresses(resource.get("address")):
                _collect_address(address, streets, places)
            for contact in resource.get("telecom") or []:
                digits = re.sub(r"\D", "", str(contact.get("value") or "")) if contact.get("system") == "phone" else ""
                if len(digits) == 10:
                    phones.add(digits)
    return Sources(tuple(patients), {g: tuple(sorted(v)) for g, v in given.items()}, tuple(sorted(families)),
                   tuple(sorted(streets)), tuple(sorted(places)), tuple(sorted(phones)))


def _clean(name: Any) -> str:
    """A Synthea name without its numeric suffix ("Alva958" → "Alva")."""
    return re.sub(r"\d+", "", name).strip() if isinstance(name, str) else ""


def _addresses(value: Any) -> list[Mapping[str, Any]]:
    items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    return [a for a in items if isinstance(a, dict)]


def _collect_address(address: Mapping[str, Any], streets: set[str], places: set[tuple[str, str, str]]) -> None:
    for line in address.get("line") or []:
        m = re.match(r"^\d+\s+(.+?)(?:\s+(?:Suite|Apt|Unit)\s+\d+)?$", line)
        if m:
            streets.add(m.group(1).title())
    city, postal, state = address.get("city"), address.get("postalCode"), address.get("state")
    if city and postal and state:
        places.add((str(city).title(), str(postal), str(state)))


# -- persons ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    """A home address of a person."""

    line: str
    city: str
    postal_code: str
    state: str


@dataclass(frozen=True)
class Person:
    """One real individual: the truth every record of them is perturbed from."""

    pid: str
    national_id: str
    given: tuple[str, ...]
    family: str
    gender: str
    birth_date: date
    address: Address
    phone: str
    email: str | None
    #: ``synthea`` (a real Synthea Patient), ``synthetic``, or the hard negative it is: ``twin``,
    #: ``namesake``, ``junior``.
    kind: str
    #: The person a hard negative was made from.
    related: str | None = None
    #: A family name used before (Synthea's ``maiden`` name).
    maiden: str | None = None


@dataclass(frozen=True)
class LabelledRecord:
    """One hospital's Patient resource and the person it really is."""

    person: str
    patient: dict[str, Any]
    #: The perturbations applied to this record.
    tags: tuple[str, ...]


class _Builder:
    """Seeded generator of distinct persons."""

    def __init__(self, sources: Sources, rng: random.Random) -> None:
        if not sources.families or not all(sources.given.values()) or not sources.streets or not sources.places:
            raise ValueError("the Synthea sources hold too few names or addresses to build persons from")
        self.s, self.rng = sources, rng
        # Names are drawn with Zipf-like frequencies over a seeded ranking, so that (as in any
        # population) a few names are common and namesakes happen: the top given name of a gender
        # is about 3 % of people, the top family name about 2 %.
        self.given_weights = {g: _zipf(len(names), 0.6) for g, names in sources.given.items()}
        self.family_weights = _zipf(len(sources.families), 0.5)
        self.given_names = {g: _ranked(names, rng) for g, names in sources.given.items()}
        self.family_names = _ranked(sources.families, rng)
        self.persons: list[Person] = []
        self.national_ids: set[str] = set()
        self.identities: set[tuple[str, str, date]] = set()
        self.addresses: set[Address] = set()
        self.phones: set[str] = set()

    def add(self, person: Person) -> Person:
        self.persons.append(person)
        self.identities.add((person.given[0], person.family, person.birth_date))
        return person

    def national_id(self) -> str:
        while True:
            body = str(self.rng.randint(1, 8)) + "".join(str(self.rng.randint(0, 9)) for _ in range(11))
            value = body + check_digit(body)
            if value not in self.national_ids:
                self.national_ids.add(value)
                return value

    def address(self) -> Address:
        while True:
            city, postal, state = self.rng.choice(self.s.places)
            line = f"{self.rng.randint(1, 1999)} {self.rng.choice(self.s.streets)}"
            if self.rng.random() < 0.3:
                line += f" {self.rng.choice(('Apt', 'Suite', 'Unit'))} {self.rng.randint(1, 99)}"
            address = Address(line, city, postal, state)
            if address not in self.addresses:
                self.addresses.add(address)
                return address

    def phone(self) -> str:
        # Area code, exchange and line number each from a different real Synthea number.
        pool = self.s.phones or ("5550000000",)
        while True:
            number = self.rng.choice(pool)[:3] + self.rng.choice(pool)[3:6] + self.rng.choice(pool)[6:]
            if number not in self.phones:
                self.phones.add(number)
                return number

    def birth_date(self) -> date:
        return _FIRST_BIRTH + timedelta(days=self.rng.randint(0, (_LAST_BIRTH - _FIRST_BIRTH).days))

    def family(self) -> str:
        return self.rng.choices(self.family_names, cum_weights=self.family_weights)[0]

    def given(self, gender: str) -> tuple[str, ...]:
        names, weights = self.given_names[gender], self.given_weights[gender]
        first = self.rng.choices(names, cum_weights=weights)[0]
        if self.rng.random() < RATES["middle-name"]:
            middle = self.rng.choices(names, cum_weights=weights)[0]
            if middle != first:
                return first, middle
        return (first,)

    def email(self, given: str, family: str) -> str | None:
        if self.rng.random() >= RATES["email"]:
            return None
        return f"{_ascii(given).lower()}.{_ascii(family).lower()}{self.rng.randint(1, 99)}@example.com"

    def synthetic(self, pid: str) -> Person:
        while True:
            gender = self.rng.choice(("male", "female"))
            given = self.given(gender)
            family = self.family()
            born = self.birth_date()
            if (given[0], family, born) not in self.identities:
                break
        return Person(pid, self.national_id(), given, family, gender, born, self.address(), self.phone(),
                      self.email(given[0], family), "synthetic")

    def from_synthea(self, pid: str, patient: Mapping[str, Any]) -> Person | None:
        names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
        official = next((n for n in names if n.get("use") != "maiden"), None)
        maiden = next((n for n in names if n.get("use") == "maiden"), None)
        gender = patient.get("gender")
        try:
            born = date.fromisoformat(str(patient.get("birthDate")))
        except ValueError:
            return None
        if not official or gender not in ("male", "female"):
            return None
        given = tuple(g for g in map(_clean, official.get("given") or []) if g)
        family = _clean(official.get("family"))
        if not given or not family or (given[0], family, born) in self.identities:
            return None
        addresses = _addresses(patient.get("address"))
        address = None
        if addresses and addresses[0].get("line"):
            a = addresses[0]
            address = Address(str(a["line"][0]), str(a.get("city") or ""), str(a.get("postalCode") or ""),
                              str(a.get("state") or ""))
            self.addresses.add(address)
        phones = [re.sub(r"\D", "", str(t.get("value"))) for t in patient.get("telecom") or []
                  if t.get("system") == "phone"]
        phone = phones[0] if phones and phones[0] not in self.phones else self.phone()
        self.phones.add(phone)
        return Person(pid, self.national_id(), given, family, str(gender), born, address or self.address(), phone,
                      self.email(given[0], family), "synthea",
                      maiden=_clean(maiden.get("family")) if maiden else None)

    def twin(self, pid: str, of: Person) -> Person | None:
        gender = self.rng.choice(("male", "female"))
        given = self.given(gender)
        if given[0] == of.given[0] or (given[0], of.family, of.birth_date) in self.identities:
            return None
        return Person(pid, self.national_id(), given, of.family, gender, of.birth_date, of.address, of.phone,
                      self.email(given[0], of.family), "twin", related=of.pid)

    def namesake(self, pid: str, of: Person) -> Person | None:
        born = self.birth_date()
        if (of.given[0], of.family, born) in self.identities:
            return None
        given = of.given[:1] + tuple(self.given(of.gender)[1:])
        return Person(pid, self.national_id(), given, of.family, of.gender, born, self.address(), self.phone(),
                      self.email(given[0], of.family), "namesake", related=of.pid)

    def junior(self, pid: str, of: Person) -> Person | None:
        born = of.birth_date + timedelta(days=self.rng.randint(20 * 365, 40 * 365))
        if of.gender != "male" or born > _LAST_BIRTH or (of.given[0], of.family, born) in self.identities:
            return None
        return Person(pid, self.national_id(), of.given, of.family, "male", born, of.address, of.phone,
                      None, "junior", related=of.pid)


def _zipf(n: int, exponent: float) -> list[float]:
    """Cumulative weights 1/rank^exponent for ranks 1..n."""
    total, out = 0.0, []
    for rank in range(1, n + 1):
        total += rank ** -exponent
        out.append(total)
    return out


def _ranked(names: Sequence[str], rng: random.Random) -> list[str]:
    ranked = list(names)
    rng.shuffle(ranked)
    return ranked


def persons(sources: Sources, count: int, seed: int) -> list[Person]:
    """``count`` distinct persons: the real Synthea Patients first, then recombined ones and their
    hard negatives (twins, namesakes, juniors)."""
    rng = random.Random(seed)
    b = _Builder(sources, rng)
    for patient in sources.patients:
        if len(b.persons) >= count:
            break
        person = b.from_synthea(f"p{len(b.persons):05d}", patient)
        if person:
            b.add(person)
    while len(b.persons) < count:
        person = b.add(b.synthetic(f"p{len(b.persons):05d}"))
        for kind, make in (("twin", b.twin), ("namesake", b.namesake), ("junior", b.junior)):
            if len(b.persons) < count and rng.random() < RATES[kind]:
                negative = make(f"p{len(b.persons):05d}", person)
                if negative:
                    b.add(negative)
    return b.persons


def check_digit(body: str) -> str:
    """The check digit of a 12-digit national identifier body: (11 − Σ d[i]·(13 − i) mod 11) mod 10."""
    return str((11 - sum(int(d) * (13 - i) for i, d in enumerate(body)) % 11) % 10)


# -- records ---------------------------------------------------------------------------------

def records(people: Sequence[Person], sources: Sources, seed: int) -> list[LabelledRecord]:
    """1–4 perturbed hospital records (FHIR Patients) per person, in a seeded shuffled order."""
    rng = random.Random(seed * 7919 + 1)
    builder = _Builder(sources, rng)  # new addresses and phones for persons who moved or changed number
    builder.addresses.update(p.address for p in people)
    builder.phones.update(p.phone for p in people)
    out: list[LabelledRecord] = []
    serial = 0
    for person in people:
        n = rng.choices((1, 2, 3, 4), RECORDS_PER_PERSON)[0]
        moved = builder.address() if rng.random() < RATES["moved"] else None
        new_phone = builder.phone() if rng.random() < RATES["phone-changed"] else None
        # (family name before, after) a marriage: Synthea's own married women keep their maiden
        # name in the source; a few synthetic adult women marry into another family.
        marriage: tuple[str, str] | None = None
        if person.maiden:
            marriage = (person.maiden, person.family)
        elif person.gender == "female" and person.birth_date.year < 2005 and rng.random() < RATES["married"]:
            marriage = (person.family, builder.family())
        for _ in range(n):
            serial += 1
            patient, tags = _record(person, serial, rng, moved, new_phone, marriage)
            out.append(LabelledRecord(person.pid, patient, tuple(tags)))
    rng.shuffle(out)
    return out


def _record(person: Person, serial: int, rng: random.Random, moved: Address | None, new_phone: str | None,
            marriage: tuple[str, str] | None) -> tuple[dict[str, Any], list[str]]:
    tags: list[str] = []

    def chance(kind: str) -> bool:
        hit = rng.random() < RATES[kind]
        if hit:
            tags.append(kind)
        return hit

    hospital = f"HOSP-{rng.choice('ABCDEFGH')}"
    identifiers: list[dict[str, Any]] = [
        {"system": f"urn:healthhub:sender:{hospital}:mrn", "value": f"{rng.randint(10**6, 10**7 - 1)}"}]
    if not chance("national-id-missing"):
        nid = person.national_id
        if chance("national-id-typo"):
            i = rng.randrange(13)
            nid = nid[:i] + str((int(nid[i]) + rng.randint(1, 9)) % 10) + nid[i + 1:]
        identifiers.append({"system": NATIONAL_ID_SYSTEM, "value": nid})

    # Names
    given = list(person.given)
    family = person.family
    previous: str | None = None
    if marriage and rng.random() < 0.5:  # a record from after the marriage
        previous, family = marriage
        tags.append("married")
        if not chance("maiden-kept"):
            previous = None
    elif marriage:
        family = marriage[0]
    short = _EVAL_NICKNAMES.get(given[0].lower())
    if short and chance("nickname"):
        given[0] = rng.choice(short).title()
    if len(given) > 1:
        if chance("middle-dropped"):
            given = given[:1]
        elif chance("middle-initial"):
            given[1] = given[1][0]
    if chance("given-typo"):
        given[0] = _typo(given[0], rng)
    if chance("family-typo"):
        family = _typo(family, rng)
    if chance("names-swapped"):
        given, family = [family], given[0]
    if chance("casing"):
        style = rng.choice((str.upper, str.lower, lambda s: f" {s}  "))
        given, family = [style(g) for g in given], style(family)
    name: dict[str, Any] = {"use": "official", "family": family, "given": given}
    if chance("name-text-only"):
        text = f"{family.upper()}, {' '.join(given)}" if rng.random() < 0.5 else f"{' '.join(given)} {family}"
        name = {"use": "official", "text": text}
    names = [name]
    if previous:
        names.append({"use": "maiden", "family": previous, "given": list(person.given[:1])})

    patient: dict[str, Any] = {"resourceType": "Patient", "id": f"r{serial:06d}", "identifier": identifiers,
                               "name": names}
    if not chance("gender-missing"):
        patient["gender"] = person.gender
    born = _birth_date(person.birth_date, rng, chance)
    if born:
        patient["birthDate"] = born

    address = person.address
    if moved and rng.random() < 0.5:
        address = moved
        tags.append("moved")
    if not chance("address-missing"):
        line = address.line
        if chance("address-format"):
            for long, short_form in _STREET_SHORT.items():
                line = re.sub(rf"\b{long}\b", short_form, line)
            line = line.upper() if rng.random() < 0.5 else line
        home: dict[str, Any] = {"use": "home", "line": [line], "city": address.city, "state": address.state,
                                "country": "US"}
        if address.postal_code:
            home["postalCode"] = address.postal_code
        patient["address"] = [home]

    telecom: list[dict[str, Any]] = []
    phone = person.phone
    if new_phone and rng.random() < 0.5:
        phone = new_phone
        tags.append("phone-changed")
    if not chance("phone-missing"):
        telecom.append({"system": "phone", "value": _phone_format(phone, rng), "use": "home"})
    if person.email and not chance("email-missing"):
        telecom.append({"system": "email", "value": person.email})
    if telecom:
        patient["telecom"] = telecom
    return patient, tags


def _birth_date(born: date, rng: random.Random, chance: Callable[[str], bool]) -> str | None:
    if chance("birth-date-missing"):
        return None
    text = born.isoformat()
    if chance("birth-date-year-only"):
        return text[:4]
    if born.day <= 12 and born.day != born.month and chance("birth-date-transposed"):
        return f"{born.year:04d}-{born.day:02d}-{born.month:02d}"
    if chance("birth-date-digit"):
        digits = text.replace("-", "")
        for _ in range(20):  # a wrong digit that still makes a valid date
            i = rng.randrange(8)
            candidate = digits[:i] + str(rng.randint(0, 9)) + digits[i + 1:]
            try:
                wrong = date(int(candidate[:4]), int(candidate[4:6]), int(candidate[6:]))
            except ValueError:
                continue
            if wrong != born and date(1900, 1, 1) <= wrong <= _LAST_BIRTH:
                return wrong.isoformat()
    return text


def _typo(word: str, rng: random.Random) -> str:
    """One keyboard slip: a letter inserted, deleted, substituted or two swapped."""
    if len(word) < 3:
        return word
    i = rng.randrange(len(word))
    op = rng.choice(("insert", "delete", "substitute", "transpose"))
    letter = rng.choice(_LETTERS)
    if op == "insert":
        out = word[:i] + letter + word[i:]
    elif op == "delete":
        out = word[:i] + word[i + 1:]
    elif op == "substitute":
        out = word[:i] + letter + word[i + 1:]
    else:
        i = min(i, len(word) - 2)
        out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return out[:1].upper() + out[1:] if out else word


def _phone_format(digits: str, rng: random.Random) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return rng.choice((f"{a}-{b}-{c}", f"({a}) {b}-{c}", digits, f"+1 {a} {b} {c}"))


def _ascii(text: str) -> str:
    return re.sub(r"[^A-Za-z]", "", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode())


def labelled_set(root: Path, count: int, seed: int) -> tuple[list[Person], list[LabelledRecord]]:
    """The persons and their hospital records for one seed (the Synthea files under ``root``)."""
    sources = load_sources(root)
    people = persons(sources, count, seed)
    return people, records(people, sources, seed)


# -- evaluation ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    """Pairwise precision and recall of a matcher at AUTO_LINK, with blocking and review figures."""

    persons: int
    records: int
    #: Pairs of records of one person.
    true_pairs: int
    #: Distinct pairs sharing at least one blocking key (the pairs scored).
    candidate_pairs: int
    #: Share of the true pairs that blocking made candidates.
    pair_completeness: float
    true_pos: int
    false_pos: int
    false_neg: int
    precision: float
    recall: float
    f1: float
    #: True pairs the score had to decide (not both records with the same valid national id)
    #: and the recall on them alone.
    scored_true_pairs: int
    scored_recall: float
    #: Pairs with REVIEW ≤ score < AUTO_LINK, and how many of them are the same person.
    review_pairs: int
    review_true: int
    #: Precision and recall of the transitive closure of the predicted links.
    closure_precision: float
    closure_recall: float
    #: Distinct candidates per record (mean, 99th percentile, max) and records per key (mean, max).
    mean_candidates: float
    p99_candidates: int
    max_candidates: int
    mean_block: float
    max_block: int
    seconds: float
    #: Perturbation tags on the records of missed pairs, and kinds of the falsely linked persons.
    missed: Mapping[str, int] = field(default_factory=dict)
    false_links: Mapping[str, int] = field(default_factory=dict)


Matcher = Callable[[Features, Features], Match]


def evaluate(labelled: Sequence[LabelledRecord], matcher: Matcher = score,
             keys: Callable[[Features], set[str]] = blocking_keys, *, auto_link: float = AUTO_LINK,
             review: float = REVIEW, people: Iterable[Person] = ()) -> Report:
    """Block, score every candidate pair and count pairs against the person labels."""
    started = time.perf_counter()
    feats = [features(r.patient) for r in labelled]
    blocks: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(feats):
        for key in keys(f):
            blocks[key].append(i)
    candidates: set[tuple[int, int]] = set()
    for members in blocks.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                candidates.add((members[x], members[y]))
    per_record = Counter[int]()
    for i, j in candidates:
        per_record[i] += 1
        per_record[j] += 1

    linked: list[tuple[int, int]] = []
    true_pos = false_pos = review_pairs = review_true = 0
    kinds = {p.pid: (p.kind, p.related) for p in people}
    false_links = Counter[str]()
    blocked_true = 0
    for i, j in sorted(candidates):
        same = labelled[i].person == labelled[j].person
        blocked_true += same
        value = matcher(feats[i], feats[j]).score
        if value >= auto_link:
            linked.append((i, j))
            if same:
                true_pos += 1
            else:
                false_pos += 1
                false_links[_relation(labelled[i].person, labelled[j].person, kinds)] += 1
        elif value >= review:
            review_pairs += 1
            review_true += same

    by_person: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(labelled):
        by_person[r.person].append(i)
    true_pairs = sum(len(v) * (len(v) - 1) // 2 for v in by_person.values())
    linked_set = set(linked)
    missed = Counter[str]()
    scored_true = scored_found = 0
    for members in by_person.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = sorted((members[x], members[y]))
                if not (feats[i].national_id and feats[i].national_id == feats[j].national_id):
                    scored_true += 1
                    scored_found += (i, j) in linked_set
                if (i, j) not in linked_set:
                    missed.update(set(labelled[i].tags) | set(labelled[j].tags) or {"none"})
                    if (i, j) not in candidates:
                        missed["not-blocked"] += 1
    closure_tp, closure_pairs = _closure(labelled, linked)
    false_neg = true_pairs - true_pos
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0
    recall = true_pos / true_pairs if true_pairs else 1.0
    counts = sorted(per_record[i] for i in range(len(labelled)))
    return Report(
        persons=len(by_person), records=len(labelled), true_pairs=true_pairs, candidate_pairs=len(candidates),
        pair_completeness=blocked_true / true_pairs if true_pairs else 1.0,
        true_pos=true_pos, false_pos=false_pos, false_neg=false_neg,
        precision=precision, recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        scored_true_pairs=scored_true, scored_recall=scored_found / scored_true if scored_true else 1.0,
        review_pairs=review_pairs, review_true=review_true,
        closure_precision=closure_tp / closure_pairs if closure_pairs else 1.0,
        closure_recall=closure_tp / true_pairs if true_pairs else 1.0,
        mean_candidates=sum(counts) / len(counts) if counts else 0.0,
        p99_candidates=counts[int(0.99 * (len(counts) - 1))] if counts else 0,
        max_candidates=counts[-1] if counts else 0,
        mean_block=sum(len(v) for v in blocks.values()) / len(blocks) if blocks else 0.0,
        max_block=max((len(v) for v in blocks.values()), default=0),
        seconds=time.perf_counter() - started,
        missed=dict(missed.most_common()), false_links=dict(false_links.most_common()),
    )


def _relation(a: str, b: str, kinds: Mapping[str, tuple[str, str | None]]) -> str:
    """How two different persons relate: the hard-negative kind, or ``unrelated``."""
    kind_a, related_a = kinds.get(a, ("", None))
    kind_b, related_b = kinds.get(b, ("", None))
    if related_a == b:
        return kind_a
    if related_b == a:
        return kind_b
    if related_a and related_a == related_b:
        return f"{kind_a}+{kind_b}"
    return "unrelated"


def _closure(labelled: Sequence[LabelledRecord], linked: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """(true pairs, all pairs) inside the clusters the links form transitively (union–find)."""
    parent = list(range(len(labelled)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in linked:
        parent[root(i)] = root(j)
    clusters: dict[int, Counter[str]] = defaultdict(Counter)
    for i, r in enumerate(labelled):
        clusters[root(i)][r.person] += 1
    true_pairs = all_pairs = 0
    for members in clusters.values():
        size = sum(members.values())
        all_pairs += size * (size - 1) // 2
        true_pairs += sum(c * (c - 1) // 2 for c in members.values())
    return true_pairs, all_pairs
