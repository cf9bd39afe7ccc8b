"""The machinery of :mod:`agent.schema`: a key (:class:`Field`), a table of keys, and
:func:`setting`, which makes a dataclass field that is also a key of the schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.valuetypes import Context, ValueType


@dataclass(frozen=True)
class Field:
    """One key of one table. ``default`` and ``example`` are TOML values (None: unset)."""

    name: str
    type: ValueType
    default: Any
    doc: str
    example: Any = None
    check: Callable[[Any, Context], None] | None = None
    required: bool = False

    def convert(self, value: object, context: Context) -> Any:
        """Return ``value`` typed and checked; raises ValueError (or BadEntries)."""
        converted = self.type.convert(value, context)
        if self.check is not None:
            self.check(converted, context)
        return converted


@dataclass(frozen=True)
class Table:
    """A table of the agent file: ``[name]``, or ``[name.ANY]`` for each entry if ``named``."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    named: bool = False


def setting(
    type_: ValueType,
    default: Any,
    doc: str,
    *,
    example: Any = None,
    check: Callable[[Any, Context], None] | None = None,
    required: bool = False,
) -> Any:
    """Return a dataclass field that is also a key of the schema.

    ``default`` is the TOML value (None: unset); the field's default is that value
    converted by ``type_``, so the loaded default and the documented one cannot differ.
    """
    spec = Field("", type_, default, doc, example, check, required)
    value = None if default is None else type_.convert(default, Context())
    meta = {"schema": spec}
    if value is None or getattr(type(value), "__hash__", None) is not None:
        return field(default=value, metadata=meta)
    return field(default_factory=lambda: value, metadata=meta)


def schema_fields(cls: type) -> tuple[Field, ...]:
    """Return the schema keys of the dataclass ``cls`` (its fields made with :func:`setting`)."""
    return tuple(
        replace(f.metadata["schema"], name=f.name) for f in fields(cls) if "schema" in f.metadata
    )
