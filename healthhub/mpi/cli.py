"""``healthhub mpi …``: a reviewer's view of the master patient index.

Registered in ``healthhub/cli.py`` with ``main.add_command(mpi)``. Each command runs in one
transaction and, on a request the MPI cannot carry out, exits non-zero with a one-line error.
Imports are made inside the commands, as in ``healthhub/cli.py``: ``healthhub --help`` stays quick.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@click.group()
def mpi() -> None:
    """The master patient index: possible matches waiting for a reviewer, links between records."""


@mpi.command("reviews")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Show at most this many (the best first).")
def reviews(limit: int) -> None:
    """List the pending possible matches, best first, with both records' names and birth dates."""
    from sqlalchemy import func, select

    from ..storage.models import Resource
    from .models import MpiReview

    pending = MpiReview.status == "pending"
    with _transaction() as session:
        # a page, not the queue: a large load can leave tens of thousands of pairs to review
        total = session.scalar(select(func.count()).select_from(MpiReview).where(pending)) or 0
        rows = list(session.scalars(select(MpiReview).where(pending)
                                    .order_by(MpiReview.score.desc(), MpiReview.a, MpiReview.b).limit(limit)))
        ids = {p for r in rows for p in (r.a, r.b)}
        contents: dict[str, Any] = dict(session.execute(select(Resource.id, Resource.content).where(
            Resource.resource_type == "Patient", Resource.id.in_(ids))).all()) if ids else {}
    if not rows:
        click.echo("no pending reviews")
        return
    for r in rows:
        click.echo(f"{r.score:.4f} {r.grade:<8}  {_describe(r.a, contents.get(r.a))}  ~  "
                   f"{_describe(r.b, contents.get(r.b))}")
    if total > len(rows):
        click.echo(f"… {total - len(rows)} more pending (--limit to see more; decide these first)")


@mpi.command("link")
@click.argument("a")
@click.argument("b")
def link(a: str, b: str) -> None:
    """Link two Patient records of one person (a reviewer's decision; closes their review)."""
    from ..clock import utcnow
    from .linkage import link as link_records

    with _transaction() as session:
        written = link_records(session, a, b, now=utcnow())
    click.echo(f"linked Patient/{a} and Patient/{b} ({len(written)} record(s) updated)")


@mpi.command("reject")
@click.argument("a")
@click.argument("b")
def reject(a: str, b: str) -> None:
    """Decide that two records are different people: never proposed again."""
    from ..clock import utcnow
    from .linkage import reject as reject_pair

    with _transaction() as session:
        reject_pair(session, a, b, now=utcnow())
    click.echo(f"rejected Patient/{a} ~ Patient/{b}: not one person")


@mpi.command("unlink")
@click.argument("a")
@click.argument("b")
def unlink(a: str, b: str) -> None:
    """Remove the link of two records (kept as a decision: never linked again by matching)."""
    from ..clock import utcnow
    from .linkage import unlink as unlink_records

    with _transaction() as session:
        written = unlink_records(session, a, b, now=utcnow())
    click.echo(f"unlinked Patient/{a} and Patient/{b} ({len(written)} record(s) updated)")


@contextmanager
def _transaction() -> Iterator[Session]:
    """One transaction on the configured database; MPI refusals as a one-line error."""
    from ..config import Config
    from ..db import Database
    from .linkage import MpiError

    try:
        config = Config.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    database = Database(config)
    try:
        with database.transaction() as session:
            yield session
    except MpiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()


def _describe(patient_id: str, content: Any) -> str:
    """``Patient/<id> Given FAMILY 1970-01-31`` (what a reviewer compares)."""
    if not isinstance(content, dict):
        return f"Patient/{patient_id} (deleted)"
    names = [n for n in content.get("name") or [] if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    given = " ".join(g for g in name.get("given") or [] if isinstance(g, str))
    family = name.get("family") if isinstance(name.get("family"), str) else ""
    text = " ".join(p for p in (given, family) if p) or (name.get("text") if isinstance(name.get("text"), str) else "")
    return f"Patient/{patient_id} {text or '(no name)'} {content.get('birthDate') or '-'}"
