"""search tables: no key or foreign key, date span class, id-ordered lookup indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

The search_* tables hold derived data (re-extractable from `resources`), so this migration
rebuilds them instead of altering them (SQLite cannot drop a constraint in place):

- no `pk` column and no foreign key to `resources`: the per-row FK check was the largest cost
  of a write on PostgreSQL (bench/RESULTS.md, findings 1 and 3);
- `search_date.span` (width class of [low, high]) with an index on (type, param, span, low),
  so a date window is read from the rows near it (finding 6);
- token and reference lookups end with `resource_id` (finding 7); `search_string.exact` is
  indexed; the per-resource index is (type, resource_id, param) (finding 8);
- the indexes on reference url / identifier and on UCUM-converted quantities are partial
  (`… IS NOT NULL`): most rows have none, and indexing NULLs only slowed writes.

The index rows are re-extracted by `healthhub db upgrade` (the reindex flag set below).
"""
from __future__ import annotations

from typing import Any

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_Key = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_Num = sa.Float(precision=53)
_Time = sa.DateTime(timezone=True)
_COMPOSITE = {f"c{i}_{field}": typ for i in range(3)
              for field, typ in (("system", sa.Text), ("code", sa.Text), ("num", _Num), ("low", _Time),
                                 ("high", _Time))}

#: name → (value columns, lookup indexes after (resource_type, param)) in revisions 0002 and 0003.
_V2: dict[str, tuple[dict[str, Any], list[tuple[str, ...]]]] = {
    "search_string": ({"value": sa.Text, "exact": sa.Text}, []),
    "search_token": ({"system": sa.Text, "code": sa.Text, "text": sa.Text, "type_system": sa.Text,
                      "type_code": sa.Text}, [("code", "system")]),
    "search_reference": ({"target_type": sa.String(64), "target_id": sa.String(64), "url": sa.Text,
                          "ident_system": sa.Text, "ident_value": sa.Text},
                         [("target_id", "target_type"), ("url",), ("ident_value",)]),
    "search_date": ({"low": _Time, "high": _Time}, [("low", "high"), ("high",)]),
    "search_number": ({"value": _Num}, [("value",)]),
    "search_quantity": ({"value": _Num, "system": sa.Text, "code": sa.Text, "canonical_value": _Num,
                         "canonical_code": sa.Text}, [("code", "value"), ("canonical_code", "canonical_value")]),
    "search_uri": ({"uri": sa.Text}, [("uri",)]),
    "search_composite": (_COMPOSITE, [("c0_code",)]),
}
_V3 = dict(_V2)
_V3.update({
    "search_string": ({"value": sa.Text, "exact": sa.Text}, [("exact",)]),
    "search_token": (_V2["search_token"][0], [("code", "system", "resource_id")]),
    "search_reference": (_V2["search_reference"][0], [("target_id", "target_type", "resource_id")]),
    "search_quantity": (_V2["search_quantity"][0], [("code", "value")]),
    "search_date": ({"low": _Time, "high": _Time, "span": sa.SmallInteger},
                    [("low", "high"), ("high",), ("span", "low")]),
})


def _create(v3: bool) -> None:
    for name, (columns, indexes) in (_V3 if v3 else _V2).items():
        cols: list[Any] = []
        if not v3:
            cols.append(sa.Column('pk', _Key, autoincrement=True, nullable=False))
        cols += [sa.Column('resource_type', sa.String(length=64), nullable=False),
                 sa.Column('resource_id', sa.String(length=64), nullable=False),
                 sa.Column('param', sa.String(length=100), nullable=False)]
        cols += [sa.Column(col, typ, nullable=True) for col, typ in columns.items()]
        if not v3:
            cols += [sa.ForeignKeyConstraint(['resource_type', 'resource_id'],
                                             ['resources.resource_type', 'resources.id'],
                                             name=f'fk_{name}_resource', ondelete='CASCADE'),
                     sa.PrimaryKeyConstraint('pk', name=f'pk_{name}')]
        op.create_table(name, *cols)
        per_resource = ['resource_type', 'resource_id', 'param'] if v3 else ['resource_type', 'resource_id']
        if v3 and name == "search_reference":  # covering for _include / $everything (SQLite's plan)
            per_resource += ['target_type', 'target_id']
        op.create_index(f'ix_{name}_resource', name, per_resource)
        for i, idx in enumerate(indexes):
            op.create_index(f'ix_{name}_{i}', name, ['resource_type', 'param', *idx])
    if v3:  # partial: most rows have no url / identifier / UCUM form
        for name, table, cols in (("ix_search_reference_1", "search_reference", ["url"]),
                                  ("ix_search_reference_2", "search_reference", ["ident_value"]),
                                  ("ix_search_quantity_1", "search_quantity", ["canonical_code", "canonical_value"])):
            where = sa.text(f"{cols[0]} IS NOT NULL")
            op.create_index(name, table, ['resource_type', 'param', *cols], postgresql_where=where, sqlite_where=where)
    op.create_index('ix_search_string_value', 'search_string', ['resource_type', 'param', 'value'],
                    postgresql_ops={'value': 'text_pattern_ops'})
    op.create_index('ix_search_reference_target', 'search_reference', ['target_type', 'target_id', 'param'])


def _drop() -> None:
    for name in _V2:
        op.drop_table(name)  # drops its indexes too


def _flag_reindex() -> None:
    op.execute("DELETE FROM app_state WHERE key = 'search.reindex'")
    app_state = sa.table("app_state", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.bulk_insert(app_state, [{"key": "search.reindex", "value": "required"}])


def upgrade() -> None:
    _drop()
    _create(v3=True)
    _flag_reindex()


def downgrade() -> None:
    _drop()
    _create(v3=False)
    _flag_reindex()
