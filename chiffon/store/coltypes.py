"""Column types that behave the same on PostgreSQL and SQLite.

Two differences between the backends would otherwise leak into the rest of
Chiffon:

* **JSON**: PostgreSQL gets ``JSONB`` (indexable, compact, compared by value);
  SQLite gets SQLAlchemy's generic ``JSON`` (text with ``json_*`` functions).
* **Time**: PostgreSQL stores ``timestamptz`` and hands back aware datetimes;
  SQLite has no time type at all and hands back naive ones. :class:`UTCDateTime`
  refuses naive datetimes on the way in and returns aware UTC on the way out,
  so every datetime that leaves the store is aware and in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: JSON documents: JSONB on PostgreSQL, JSON text on SQLite. ``none_as_null``
#: stores Python ``None`` as SQL NULL (not the JSON literal ``null``) so that
#: ``IS NULL`` means what it says on nullable columns.
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class NaiveDatetimeError(ValueError):
    """A naive datetime reached the store; its time zone would be a guess."""


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored and returned in UTC on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # Refuse rather than guess: a naive local time stored as UTC would
            # silently shift every audit entry by the host's offset.
            raise NaiveDatetimeError(f"naive datetime {value.isoformat()} given; pass an aware one (UTC)")
        utc = value.astimezone(UTC)
        # SQLite keeps text; storing UTC wall time without an offset keeps the
        # text sortable, so ORDER BY and range filters stay correct.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return as_utc(value)


def as_utc(value: datetime) -> datetime:
    """Naive values from the database are UTC by construction (see above)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
