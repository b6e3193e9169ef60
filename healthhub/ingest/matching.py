"""Patient matching for the master patient index: features, blocking keys and scores.

Pure functions over FHIR Patient resources (dicts): no database, no Flask. The hub stores
:func:`blocking_keys` per Patient, scores each candidate that shares a key with
:func:`score`, links automatically at :data:`AUTO_LINK` and queues :data:`REVIEW` ≤ score <
:data:`AUTO_LINK` for a person to decide (CONTRACT §6 "Patient matching").

Scoring is Fellegi–Sunter: every field comparison lands on a level whose weight is
``log2(m / u)`` — m the chance of that level between two records of one person, u between
two people — and the sum of weights plus a prior becomes a 0..1 score through the logistic
function. The national identifier overrides everything (same → certain, different →
certainly-not). See Fellegi & Sunter (1969), "A Theory for Record Linkage", JASA 64:1183;
the grades are FHIR's https://hl7.org/fhir/R4B/extension-match-grade.html used by
https://hl7.org/fhir/R4B/patient-operation-match.html.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jellyfish

from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM, validate_national_id

#: Score at or above which two records are linked without a person looking (grade ``certain``).
AUTO_LINK = 0.98
#: Score at or above which a pair is a ``probable`` match (review first, FHIR match-grade).
PROBABLE = 0.80
#: Score at or above which a pair is a ``possible`` match, kept for human review.
REVIEW = 0.40

#: https://hl7.org/fhir/R4B/extension-match-grade.html
MATCH_GRADE_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"

# Log-odds (bits) of a match before any field is compared: the candidates of one inbound record
# (those sharing a blocking key) hold about one true match among a few thousand people.
_PRIOR = -12.0
# Without the national identifier a score never reaches 1.0: that value means "same national id".
_MAX_SCORED = 0.9999
# A pair whose given name, birth date or gender plainly disagrees is capped below PROBABLE (one conflict)
# or below REVIEW (two or more), whatever the rest says: family name, address, phone and e-mail
# are shared by a household (twins, spouses, a father and his junior), so they cannot outweigh
# evidence that these are two different members of it.
_ONE_CONFLICT_CAP = 0.75
_TWO_CONFLICTS_CAP = 0.30
# Without a birth date on both sides the same name at the same address may be a father and his
# junior: such a pair is at most ``probable`` (a person decides), never linked automatically.
_NO_BIRTH_DATE_CAP = 0.95
# Without the family name agreeing (the same, a previous name, a typo, sounding alike, or given
# and family swapped) the same given name, birth date and sex are shared by many people of a
# national population (u ≈ 1/100 × 1/30 000 × 1/2: in 70 million people, about a dozen per
# combination; the CSV benchmark linked 24,313 pairs of different people this way): such a pair
# is at most ``probable`` unless a phone, an e-mail or a street address agrees as well.
_NO_FAMILY_AGREEMENT_CAP = 0.95
_FAMILY_AGREES = frozenset({"family:exact", "family:previous", "family:close", "family:phonetic"})
_CONTACT_AGREES = frozenset({"address:street", "phone:agree", "email:agree"})

# Field weights in bits, log2(m/u), with m/u as estimated for a national population:
# family name u ≈ 1/500 (people sharing a surname), given u ≈ 1/100, date of birth u ≈ 1/30 000,
# gender u = 1/2, a street address u ≈ 1/100 000, a postal code u ≈ 1/1 000, a phone or an
# e-mail u ≈ 1/1 000 000 (households share them; see the conflict cap above).
_W_FAMILY = {"exact": 8.8, "previous": 7.5, "close": 5.5, "phonetic": 4.0, "similar": 0.5, "disagree": -4.6}
_W_GIVEN = {"exact": 6.4, "nickname": 5.0, "middle": 4.5, "close": 4.3, "phonetic": 3.0, "initial": 2.5,
            "similar": 0.0, "disagree": -5.0}
_W_MIDDLE = {"exact": 1.5, "initial": 0.5, "disagree": -1.5}
_W_SWAPPED_PENALTY = 1.0
_W_BIRTH = {"exact": 14.7, "transposed": 9.0, "one-digit": 6.0, "year-month": 5.0, "year": 3.5,
            "disagree": -6.0}
_W_GENDER = {"agree": 1.0, "disagree": -6.6}
_W_ADDRESS = {"street": 12.0, "postal": 3.0, "city": 1.5, "disagree": -2.0}
_W_PHONE = {"agree": 14.0, "disagree": -1.5}
_W_EMAIL = {"agree": 14.0, "disagree": -1.0}

# Common English and Spanish given-name variants (Synthea's population): each group is one name.
_NICKNAME_GROUPS = (
    "william bill billy will willy liam", "robert bob bobby rob robbie bert", "richard rick ricky dick rich",
    "james jim jimmy jamie", "john jack johnny jon", "jonathan jon jonny johnny", "joseph joe joey jose",
    "michael mike mikey mick", "thomas tom tommy", "charles charlie chuck chas", "christopher chris kit",
    "christian chris", "christine chris chrissy tina", "daniel dan danny", "david dave davey",
    "edward ed eddie ned ted", "edwin ed eddie", "elizabeth liz beth betty eliza lisa betsy libby",
    "margaret maggie meg peggy marge margie greta", "katherine kate kathy katie cathy kat",
    "catherine kate cathy katie cat", "kathryn kate kathy katie", "patricia pat patty trish tricia",
    "patrick pat paddy", "jennifer jen jenny", "susan sue susie", "deborah deb debbie", "dorothy dot dottie",
    "alexander alex sandy xander", "alexandra alex sandra sandy lexi", "anthony tony", "antonio tony",
    "andrew andy drew", "benjamin ben benny", "frederick fred freddie", "gregory greg", "harold harry hal",
    "henry harry hank", "lawrence larry", "leonard len lenny leo", "matthew matt", "nicholas nick nicky",
    "peter pete", "raymond ray", "ronald ron ronnie", "samuel sam sammy", "samantha sam sammy",
    "stephen steve stevie", "steven steve stevie", "timothy tim timmy", "walter walt wally", "wallace wally",
    "albert al bert", "alfred al alfie fred", "abigail abby", "rebecca becky becca", "victoria vicky tori",
    "jessica jess jessie", "barbara barb barbie", "judith judy", "kimberly kim", "pamela pam",
    "teresa terry tess", "theresa terry tess", "virginia ginny", "zachary zach", "kenneth ken kenny",
    "donald don donny", "douglas doug", "gerald gerry jerry", "eugene gene", "clifford cliff",
    "clinton clint", "bernard bernie", "rudolph rudy", "francisco paco pancho frank", "francis frank fran",
    "franklin frank", "guadalupe lupe", "jose pepe", "manuel manny", "eduardo eddie lalo", "alberto beto",
    "roberto beto", "enrique kike", "ignacio nacho", "isabel isabella bella izzy", "josephine jo josie",
    "joanne jo", "louis lou", "louise lou", "mary molly polly mae", "nancy nan", "sarah sara sally",
    "sylvester sly", "vincent vince vinny", "allen al", "allan al", "arthur art", "augustus gus",
    "augustine gus", "cornelius neil connie", "elias eli", "eli elijah", "jacob jake", "jeffrey jeff",
    "jeremiah jerry", "jerome jerry", "joshua josh", "kristopher kris", "lucas luke", "mitchell mitch",
    "nathaniel nate nat", "nathan nate", "philip phil", "phillip phil", "randall randy", "reginald reggie",
    "russell russ", "solomon sol", "stanley stan", "terrence terry", "terrance terry", "theodore ted teddy theo",
    "tobias toby", "valentine val", "wilfred fred", "willard will", "wilson will", "alphonse al",
)

_NAME_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "jr", "sr", "ii", "iii", "iv", "md", "phd"})
_PREVIOUS_NAME_USES = frozenset({"old", "maiden"})
_ADDRESS_SYNONYMS = {
    "street": "st", "str": "st", "avenue": "ave", "av": "ave", "road": "rd", "drive": "dr", "lane": "ln",
    "boulevard": "blvd", "court": "ct", "place": "pl", "square": "sq", "terrace": "ter", "highway": "hwy",
    "parkway": "pkwy", "north": "n", "south": "s", "east": "e", "west": "w", "soi": "soi", "moo": "moo",
}
# Unit designators carry no information once the unit number itself is kept.
_ADDRESS_NOISE = frozenset({"apt", "apartment", "suite", "ste", "unit", "no", "number", "flat", "room", "rm"})
_ZIP_PLUS_4 = re.compile(r"^\d{5}-\d{4}$")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


@dataclass(frozen=True)
class Features:
    """What matching compares, taken once from a Patient (names folded to lower-case ASCII)."""

    national_id: str | None
    #: Current family name: letters only, double-barrelled parts joined by a space.
    family: str
    #: Given names in order: the first name first, then middle names.
    given: tuple[str, ...]
    #: ``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY``.
    birth_date: str | None
    #: ``male`` | ``female`` | ``other``; ``unknown`` and absent are None.
    gender: str | None
    postal_code: str | None
    city: str | None
    district: str | None
    address_tokens: frozenset[str]
    #: Last nine digits of each phone number.
    phones: frozenset[str]
    emails: frozenset[str]
    #: Family names of other names (``maiden``, ``old``, a second ``official`` one).
    other_families: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    """The score of one pair, its FHIR match grade and why."""

    score: float
    grade: str
    reasons: tuple[str, ...]


# -- features -------------------------------------------------------------------------------

def features(patient: Mapping[str, Any]) -> Features:
    """Take the matching features from a FHIR Patient resource, ignoring what is malformed."""
    names = [n for n in _items(patient.get("name")) if isinstance(n, Mapping)]
    family, given, others = _names(names)
    address = _home_address(patient.get("address"))
    return Features(
        national_id=_national_id(patient.get("identifier")),
        family=family,
        given=given,
        birth_date=_birth_date(patient.get("birthDate")),
        gender=_gender(patient.get("gender")),
        postal_code=_postal(address.get("postalCode")),
        city=_place(address.get("city")),
        district=_place(address.get("district")),
        address_tokens=_address_tokens(address.get("line")),
        phones=frozenset(_phones(patient.get("telecom"))),
        emails=frozenset(_emails(patient.get("telecom"))),
        other_families=others,
    )


def _items(value: Any) -> list[Any]:
    """A FHIR repeating element as a list, whether it arrived as a list, a single value or None."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def fold(text: Any) -> str:
    """Fold a name to the lower-case ASCII letters and single spaces that matching compares."""
    if not isinstance(text, str):
        return ""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    ascii_text = ascii_text.replace("'", "").replace("`", "")  # O'Brien = OBrien = Obrien
    return " ".join(re.sub(r"[^a-z]+", " ", ascii_text).split())


def _names(names: list[Mapping[str, Any]]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The current family name, the given names and every other family name of a Patient."""
    current = ([n for n in names if n.get("use") not in _PREVIOUS_NAME_USES and _has_name(n)]
               or [n for n in names if _has_name(n)])  # only old names: the last known is still a name
    # https://hl7.org/fhir/R4B/datatypes.html#HumanName: prefer official, then usual, then the first.
    order = {"official": 0, "usual": 1}
    current.sort(key=lambda n: order.get(str(n.get("use")), 2))
    family, given = _name_parts(current[0]) if current else ("", ())
    others: list[str] = []
    for n in names:
        other_family, other_given = _name_parts(n)
        if other_family and other_family != family and other_family not in others:
            others.append(other_family)
        if not given and other_given:
            given = other_given
    return family, given, tuple(others)


def _has_name(name: Mapping[str, Any]) -> bool:
    return bool(fold(name.get("family")) or any(fold(g) for g in _items(name.get("given"))) or fold(name.get("text")))


def _name_parts(name: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """Family and given names of one HumanName, parsed from ``text`` when the parts are absent."""
    family = fold(name.get("family"))
    given = tuple(t for g in _items(name.get("given")) for t in fold(g).split() if t not in _NAME_TITLES)
    if family or given:
        return family, given
    text = name.get("text")
    if not isinstance(text, str):
        return "", ()
    if "," in text:  # "FAMILY, Given Middle" as many registration systems print it
        family_part, _, given_part = text.partition(",")
        tokens = [t for t in fold(given_part).split() if t not in _NAME_TITLES]
        return fold(family_part), tuple(tokens)
    tokens = [t for t in fold(text).split() if t not in _NAME_TITLES]
    if len(tokens) < 2:
        return (tokens[0] if tokens else ""), ()
    return tokens[-1], tuple(tokens[:-1])


def _national_id(identifiers: Any) -> str | None:
    for ident in _items(identifiers):
        if isinstance(ident, Mapping) and ident.get("system") == NATIONAL_ID_SYSTEM:
            value = ident.get("value")
            if isinstance(value, str):
                valid = validate_national_id(value)
                if valid:
                    return valid
    return None


def _birth_date(value: Any) -> str | None:
    """``YYYY[-MM[-DD]]`` from a FHIR date (a dateTime is cut to its date); None if not a date."""
    if not isinstance(value, str):
        return None
    m = _DATE.match(value.strip())
    if not m:
        return None
    year, month, day = m.groups()
    if month and not 1 <= int(month) <= 12:
        return year
    if day and not 1 <= int(day) <= 31:
        return f"{year}-{month}"
    return "-".join(p for p in (year, month, day) if p)


def _gender(value: Any) -> str | None:
    g = value.strip().lower() if isinstance(value, str) else ""
    return g if g in ("male", "female", "other") else None


def _home_address(addresses: Any) -> Mapping[str, Any]:
    """The address the person lives at: home or unspecified, not old or ended, else the first."""
    candidates = [a for a in _items(addresses) if isinstance(a, Mapping)]
    for a in candidates:
        period = a.get("period")
        ended = isinstance(period, Mapping) and period.get("end")
        if a.get("use") in (None, "home") and a.get("type") != "postal" and not ended:
            return a
    current = [a for a in candidates if a.get("use") != "old"]
    return current[0] if current else {}


def _postal(value: Any) -> str | None:
    text = value.strip().lower() if isinstance(value, str) else ""
    if _ZIP_PLUS_4.match(text):  # a US ZIP+4 is the same delivery area as its five-digit ZIP
        text = text[:5]
    return re.sub(r"[^0-9a-z]", "", text) or None


def _place(value: Any) -> str | None:
    return fold(value) or None


def _address_tokens(lines: Any) -> frozenset[str]:
    tokens: set[str] = set()
    for line in _items(lines):
        if not isinstance(line, str):
            continue
        for token in re.findall(r"[a-z]+|\d+", unicodedata.normalize("NFKD", line).lower()):
            token = _ADDRESS_SYNONYMS.get(token, token)
            if token.isdigit():
                tokens.add(token.lstrip("0") or "0")
            elif token not in _ADDRESS_NOISE:
                tokens.add(token)
    return frozenset(tokens)


def _phones(telecom: Any) -> Iterable[str]:
    for contact in _items(telecom):
        if isinstance(contact, Mapping) and contact.get("system") in (None, "phone", "sms"):
            digits = re.sub(r"\D", "", str(contact.get("value") or ""))
            if len(digits) >= 7:  # shorter is an extension or garbage, never evidence
                yield digits[-9:]


def _emails(telecom: Any) -> Iterable[str]:
    for contact in _items(telecom):
        if isinstance(contact, Mapping) and contact.get("system") == "email":
            value = str(contact.get("value") or "").strip().lower().removeprefix("mailto:")
            if "@" in value:
                yield value


# -- blocking -------------------------------------------------------------------------------

def blocking_keys(f: Features) -> set[str]:
    """The short keys stored for a Patient; its candidates are the Patients sharing at least one.

    Each key combines two independent fields so a single wrong field (typo, nickname, new
    surname, transposed or mistyped date, move) still leaves another key shared, while no key
    is as coarse as a gender, a birth year or a common name alone.
    """
    keys: set[str] = set()
    if f.national_id:
        keys.add(f"nid:{f.national_id}")
    keys.update(f"tel:{p}" for p in f.phones)
    keys.update(f"em:{e}" for e in f.emails)
    dob = _blocking_date(f.birth_date)
    year = f.birth_date[:4] if f.birth_date else None
    families = [c for c in (_code(x) for x in (f.family, *f.other_families)) if c]
    first = _code(f.given[0]) if f.given else ""
    for fam in families:
        if dob:
            keys.add(f"df:{dob}:{fam}")
        if first:
            # The name pair sorted, so given/family swapped gives the same key.
            pair = ":".join(sorted((first, fam)))
            keys.add(f"nm:{year}:{pair}" if year else f"nm:{pair}")
            if f.postal_code:
                keys.add(f"np:{f.postal_code}:{pair}")
    if dob and first:
        keys.add(f"dg:{dob}:{first}")
    if dob and f.postal_code:
        keys.add(f"dp:{dob}:{f.postal_code}")
    return keys


def _blocking_date(birth_date: str | None) -> str | None:
    """A full birth date with month and day in sorted order, so a day/month swap keeps the key."""
    if not birth_date or len(birth_date) != 10:
        return None
    year, month, day = birth_date.split("-")
    low, high = sorted((month, day))
    return f"{year}{low}{high}"


@lru_cache(maxsize=65536)
def _code(name: str) -> str:
    """The phonetic key of a name (NYSIIS, first six letters), spaces ignored."""
    compact = name.replace(" ", "")
    return jellyfish.nysiis(compact)[:6] if compact else ""


# -- scoring --------------------------------------------------------------------------------

def score(a: Features, b: Features) -> Match:
    """Score whether two Patients are the same person: national id first, then Fellegi–Sunter."""
    if a.national_id and b.national_id:
        if a.national_id == b.national_id:
            return Match(1.0, "certain", ("national-id:same",))
        return Match(0.0, "certainly-not", ("national-id:different",))

    reasons: list[str] = []
    conflicts: list[str] = []
    weight = _PRIOR

    w, why, conflict = _compare_names(a, b)
    weight += w
    reasons.extend(why)
    conflicts.extend(conflict)

    level = _compare_birth_dates(a.birth_date, b.birth_date)
    cap = 1.0 if level else _NO_BIRTH_DATE_CAP
    if level:
        weight += _W_BIRTH[level]
        reasons.append(f"birth-date:{level}")
        if level == "disagree":
            conflicts.append("birth-date")

    if a.gender and b.gender:
        level = "agree" if a.gender == b.gender else "disagree"
        weight += _W_GENDER[level]
        reasons.append(f"gender:{level}")
        if level == "disagree":
            conflicts.append("gender")

    for field_name, contact, weights in (("address", _compare_addresses(a, b), _W_ADDRESS),
                                         ("phone", _compare_sets(a.phones, b.phones), _W_PHONE),
                                         ("email", _compare_sets(a.emails, b.emails), _W_EMAIL)):
        if contact:
            weight += weights[contact]
            reasons.append(f"{field_name}:{contact}")

    value = min(_MAX_SCORED, 1.0 / (1.0 + 2.0 ** -weight))
    why_capped = "+".join(conflicts) or "no-birth-date"
    if conflicts:
        cap = min(cap, _ONE_CONFLICT_CAP if len(conflicts) == 1 else _TWO_CONFLICTS_CAP)
    elif _NO_FAMILY_AGREEMENT_CAP < cap and not (_FAMILY_AGREES.intersection(reasons)
                                                  or _CONTACT_AGREES.intersection(reasons)):
        cap, why_capped = _NO_FAMILY_AGREEMENT_CAP, "no-family-agreement"
    if value > cap:
        value = cap
        reasons.append(f"capped:{why_capped}")
    value = round(value, 4)
    return Match(value, grade(value), tuple(reasons))


def grade(value: float) -> str:
    """The FHIR match grade of a score (https://hl7.org/fhir/R4B/extension-match-grade.html).

    ``certain`` is what the hub links on its own; ``probable`` and ``possible`` go to review;
    below REVIEW the pair is not a candidate at all and is graded ``certainly-not``.
    """
    if value >= AUTO_LINK:
        return "certain"
    if value >= PROBABLE:
        return "probable"
    if value >= REVIEW:
        return "possible"
    return "certainly-not"


def _compare_names(a: Features, b: Features) -> tuple[float, list[str], list[str]]:
    """Weights of family, first and middle names, trying given/family swapped when direct is poor."""
    fam = _family_level(a, b)
    first = _given_level(a.given, b.given)
    direct = (_W_FAMILY[fam] if fam else 0.0) + (_W_GIVEN[first] if first else 0.0)
    if fam in ("disagree", "similar") or first in ("disagree", "similar"):
        swapped = _swapped_levels(a, b) or _swapped_levels(b, a)
        if swapped:
            s_fam, s_first = swapped
            w = _W_FAMILY[s_fam] + _W_GIVEN[s_first] - _W_SWAPPED_PENALTY
            if w > direct:
                return w, [f"family:{s_fam}", f"given:{s_first}", "names:swapped"], []
    reasons = []
    conflicts = []
    if fam:
        reasons.append(f"family:{fam}")
    if first:
        reasons.append(f"given:{first}")
        if first == "disagree":
            conflicts.append("given")
    middle = _middle_level(a.given, b.given) if first in ("exact", "nickname", "close", "phonetic") else None
    if middle:
        direct += _W_MIDDLE[middle]
        reasons.append(f"middle:{middle}")
    return direct, reasons, conflicts


def _family_level(a: Features, b: Features) -> str | None:
    if not a.family or not b.family:
        return None
    level = _string_level(a.family, b.family, family=True)
    if level == "exact":
        return level
    # A previous (maiden, old) name of one equal to a name of the other: marriage, not a typo.
    if _string_level_any((a.family, *a.other_families), (b.family, *b.other_families)) == "exact":
        return "previous"
    # Double-barrelled names: one record has a part of the other's alone ("garcia" and "garcia
    # lopez"). Two double-barrelled names sharing one part ("garcia lopez", "garcia perez") are
    # different names: counting any shared part as agreement linked distinct people whose
    # names only shared a common part (the CSV benchmark's "…-Synth" names: 24,313 false links
    # in 508,292 rows, each with given name and birth date agreeing).
    parts_a, parts_b = set(a.family.split()), set(b.family.split())
    if parts_a != parts_b and (parts_a < parts_b or parts_b < parts_a):
        return "close"
    return level


def _string_level_any(xs: Iterable[str], ys: Iterable[str]) -> str:
    ys = list(ys)
    return "exact" if any(x and x == y for x in xs for y in ys) else "disagree"


def _given_level(a: tuple[str, ...], b: tuple[str, ...]) -> str | None:
    if not a or not b:
        return None
    x, y = a[0], b[0]
    if len(x) == 1 or len(y) == 1:  # an initial
        return "initial" if x[0] == y[0] else "disagree"
    level = _string_level(x, y, family=False)
    if level in ("exact", "close"):
        return level
    if _nicknames(x, y):
        return "nickname"
    # One record calls the person by the middle name ("John Paul" / "Paul").
    if x in b[1:] or y in a[1:]:
        return "middle"
    return level


def _middle_level(a: tuple[str, ...], b: tuple[str, ...]) -> str | None:
    """Second given names; a middle name missing on one side is neutral (often not recorded)."""
    if len(a) < 2 or len(b) < 2:
        return None
    x, y = a[1], b[1]
    if x == y:
        return "exact"
    if (len(x) == 1 or len(y) == 1) and x[0] == y[0]:
        return "initial"
    return "exact" if _string_level(x, y, family=False) == "close" else "disagree"


def _swapped_levels(a: Features, b: Features) -> tuple[str, str] | None:
    """Levels when a's given name is b's family name and the other way round, if both agree."""
    if not a.given or not b.given or not a.family or not b.family:
        return None
    fam = _string_level(a.given[0], b.family, family=True)
    first = _string_level(a.family, b.given[0], family=False)
    if fam in ("exact", "close") and first in ("exact", "close"):
        return fam, first
    return None


@lru_cache(maxsize=262144)
def _string_level(x: str, y: str, family: bool) -> str:
    """Exact, a typo (one edit, Jaro–Winkler ≥ 0.92), sounding alike, similar, or different."""
    if x == y:
        return "exact"
    xs, ys = x.replace(" ", ""), y.replace(" ", "")
    if xs == ys:
        return "exact"
    edits = jellyfish.damerau_levenshtein_distance(xs, ys)
    jw = jellyfish.jaro_winkler_similarity(xs, ys)
    shortest = min(len(xs), len(ys))
    if (edits == 1 and shortest >= 4) or (edits == 2 and shortest >= 8) or jw >= 0.94:
        return "close"
    # Metaphone alone is too coarse for short names (Kaylee = Gala = "KL").
    if jellyfish.nysiis(xs) == jellyfish.nysiis(ys) or (jw >= 0.75 and jellyfish.metaphone(xs) == jellyfish.metaphone(ys)):
        return "phonetic"
    # One edit in a three-letter name may be a typo (Zen/Ken) or another name (Ben/Ken): no evidence.
    if jw >= 0.85 or edits == 1:
        return "similar"
    return "disagree"


def _nicknames(x: str, y: str) -> bool:
    return bool(_NICKNAMES.get(x, frozenset()) & _NICKNAMES.get(y, frozenset()))


def _nickname_index() -> dict[str, frozenset[int]]:
    index: dict[str, set[int]] = {}
    for i, group in enumerate(_NICKNAME_GROUPS):
        for name in group.split():
            index.setdefault(name, set()).add(i)
    return {name: frozenset(groups) for name, groups in index.items()}


_NICKNAMES = _nickname_index()


def _compare_birth_dates(x: str | None, y: str | None) -> str | None:
    if not x or not y:
        return None
    if x == y and len(x) == 10:
        return "exact"
    if len(x) < 10 or len(y) < 10:
        # A partial date agrees or disagrees only as far as both go.
        common = min(len(x), len(y))
        if x[:common] != y[:common]:
            return "disagree"
        return "year-month" if common >= 7 else "year"
    ya, ma, da = x.split("-")
    yb, mb, db = y.split("-")
    if ya == yb and ma == db and da == mb:
        return "transposed"
    if jellyfish.damerau_levenshtein_distance(ya + ma + da, yb + mb + db) == 1:
        return "one-digit"
    return "disagree"


def _compare_addresses(a: Features, b: Features) -> str | None:
    if not (a.address_tokens or a.postal_code or a.city) or not (b.address_tokens or b.postal_code or b.city):
        return None
    same_postal = bool(a.postal_code and a.postal_code == b.postal_code)
    same_city = bool(a.city and a.city == b.city) or bool(a.district and a.district == b.district)
    if a.address_tokens and b.address_tokens:
        shared = len(a.address_tokens & b.address_tokens)
        union = len(a.address_tokens | b.address_tokens)
        places_differ = (a.postal_code and b.postal_code and not same_postal) or (a.city and b.city and not same_city)
        if shared / union >= 0.6 and not places_differ:
            return "street"
    if same_postal:
        return "postal"
    if same_city:
        return "city"
    return "disagree"


def _compare_sets(x: frozenset[str], y: frozenset[str]) -> str | None:
    if not x or not y:
        return None
    return "agree" if x & y else "disagree"
