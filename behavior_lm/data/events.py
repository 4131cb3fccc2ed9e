"""The canonical event table every reader produces and every later stage consumes.

One schema for all sources keeps the rest of the pipeline source-agnostic: preprocessing, splits
and the tokenizer never know whether events came from MovieLens, Amazon or a Taobao CSV.

Columns (Arrow types):

=============  ========  ==================================================================
``user_id``    string    raw user id, kept as text so ids never collide or lose zeros
``item_id``    string    raw item id; becomes the token ``i:<item_id>``
``behavior``   string    event kind (``pv``, ``cart``, ``buy``, ...); one kind by default
``timestamp``  int64     seconds, or the file order when the source has no time
``value``      float64   optional (rating, price, ...); null where absent
``line``       int64     1-based line (or row) in the source file, for error messages
=============  ========  ==================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from behavior_lm.errors import DataError

DEFAULT_BEHAVIOR = "interact"

SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("behavior", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
        pa.field("line", pa.int64(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


@dataclass(frozen=True)
class EventLog:
    """An Arrow table of events plus the name of where it came from (for error messages)."""

    table: pa.Table
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if self.table.schema.names != list(COLUMNS):
            raise DataError(
                f"event table has columns {self.table.schema.names}, expected {list(COLUMNS)}",
                path=self.source,
            )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pandas(cls, df: pd.DataFrame, source: str = "<memory>") -> "EventLog":
        """Build from a frame with at least user_id, item_id, timestamp; fills the rest."""
        df = df.copy()
        for col in ("user_id", "item_id", "timestamp"):
            if col not in df.columns:
                raise DataError(f"missing column '{col}'", path=source, field=col)
        if "behavior" not in df.columns:
            df["behavior"] = DEFAULT_BEHAVIOR
        if "value" not in df.columns:
            df["value"] = None
        if "line" not in df.columns:
            df["line"] = range(1, len(df) + 1)
        df["user_id"] = df["user_id"].astype(str)
        df["item_id"] = df["item_id"].astype(str)
        df["behavior"] = df["behavior"].astype(str)
        df["timestamp"] = df["timestamp"].astype("int64")
        df["value"] = pd.to_numeric(df["value"], errors="raise").astype("float64")
        df["line"] = df["line"].astype("int64")
        table = pa.Table.from_pandas(df[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
        return cls(table=table, source=source)

    def to_pandas(self) -> pd.DataFrame:
        return self.table.to_pandas()

    def with_table(self, table: pa.Table) -> "EventLog":
        return EventLog(table=table.cast(SCHEMA), source=self.source)

    # ----------------------------------------------------------------- facts
    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def num_users(self) -> int:
        return len(self.table.column("user_id").unique())

    @property
    def num_items(self) -> int:
        return len(self.table.column("item_id").unique())

    @property
    def behaviors(self) -> list[str]:
        """Distinct behavior names, in order of first appearance (Arrow's unique keeps that order;
        a Python list of every event's behavior was 1.2 GB at 10M events)."""
        return self.table.column("behavior").unique().to_pylist()

    def summary(self) -> dict[str, int]:
        return {"events": len(self), "users": self.num_users, "items": self.num_items,
                "behaviors": len(self.behaviors)}
