"""What flows between the operators of a table: one row's change."""

from __future__ import annotations

from typing import Any, NamedTuple


class Change(NamedTuple):
    """A row of a table changed from `old` to `new` (None: absent). An insert has no
    old value, a delete no new one; operators downstream of a table need both, e.g. an
    aggregation subtracts the old value from its group before it adds the new one."""

    old: Any
    new: Any
