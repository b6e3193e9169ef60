"""FhirError and OperationOutcome builders (https://hl7.org/fhir/R4B/operationoutcome.html).

Raise :class:`FhirError` anywhere below the views; ``errors.py`` renders it in one place.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue``."""

    severity: str  # fatal | error | warning | information
    code: str  # http://hl7.org/fhir/R4B/valueset-issue-type.html
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """Build an ``OperationOutcome`` resource from issues."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information(diagnostics: str, code: str = "informational") -> dict[str, Any]:
    """A one-issue, information-severity OperationOutcome (success messages)."""
    return operation_outcome([Issue("information", code, diagnostics)])


@dataclass
class FhirError(Exception):
    """An error with the HTTP status and the OperationOutcome issues to send."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.issues[0].diagnostics if self.issues else str(self.status))

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def error(status: int, code: str, diagnostics: str, expression: Sequence[str] = ()) -> FhirError:
    """Build a one-issue FhirError."""
    return FhirError(status, [Issue("error", code, diagnostics, tuple(expression))])


def invalid(diagnostics: str, expression: Sequence[str] = (), status: int = 400) -> FhirError:
    return error(status, "invalid", diagnostics, expression)


def forbidden(diagnostics: str) -> FhirError:
    """403: the access token does not allow this (SMART scopes)."""
    return error(403, "forbidden", diagnostics)


def not_found(diagnostics: str) -> FhirError:
    return error(404, "not-found", diagnostics)


def gone(diagnostics: str) -> FhirError:
    return error(410, "deleted", diagnostics)


def conflict(diagnostics: str, status: int = 409) -> FhirError:
    return error(status, "conflict", diagnostics)


#: SQLSTATEs of a transaction the database aborted in favour of a concurrent one:
#: deadlock_detected, serialization_failure (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_CONCURRENCY_ABORTS = frozenset({"40P01", "40001"})


def aborted_for_concurrency(exc: BaseException) -> bool:
    """Whether a database error (SQLAlchemy's, wrapping the driver's) says the database aborted
    the statement for a concurrent transaction: not an outage, a conflict the client may retry."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONCURRENCY_ABORTS


def concurrency_conflict() -> FhirError:
    """409 for :func:`aborted_for_concurrency` — as HAPI FHIR answers a transaction conflicting
    with a concurrent one."""
    return conflict("This request conflicted with a concurrent request and was not applied; retry it")


def not_supported(diagnostics: str, status: int = 400) -> FhirError:
    return error(status, "not-supported", diagnostics)


def precondition_failed(diagnostics: str) -> FhirError:
    return error(412, "conflict", diagnostics)
