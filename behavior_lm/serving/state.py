"""Each user's recent events, in memory, bounded, and (optionally) journaled to a file so that a
restarted server has them again.

Only the most recent ``keep`` events of a user are kept: that is all the model reads (the same
number of whole events as the rows the harness scored, :func:`~behavior_lm.data.streams.context_events`),
so memory is bounded by users x ``keep``. The journal is append-only JSON lines, one event a line,
flushed per request; on start it is replayed and rewritten (atomically) with the kept events only.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from behavior_lm.errors import DataError
from behavior_lm.rundir import atomic_write


@dataclass(frozen=True)
class StoredEvent:
    item: str
    behavior: str | None = None
    timestamp: int | None = None


class HistoryStore:
    """``user -> deque of StoredEvent`` (oldest first), thread-safe."""

    def __init__(self, keep: int, journal: Path | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self.journal = journal
        self._lock = threading.Lock()
        self._users: dict[str, deque[StoredEvent]] = {}
        self._journal_lines = 0
        if journal is not None:
            self._replay(journal)

    def _replay(self, journal: Path) -> None:
        if journal.is_file():
            for n, line in enumerate(journal.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self._append(str(row["user"]), StoredEvent(str(row["item"]), row.get("behavior"),
                                                               row.get("timestamp")))
                except (ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"cannot read the state journal ({exc})", path=str(journal), line=n) from None
        self._compact()

    def _compact(self) -> None:
        """Rewrite the journal with the kept events only (atomically)."""
        atomic_write(self.journal, "".join(self._lines(u, self._users[u]) for u in self._users))
        self._journal_lines = sum(len(h) for h in self._users.values())
        self._compact_at = 4 * self._journal_lines + 10_000   # the journal stays within a few times the state

    @staticmethod
    def _lines(user: str, events) -> str:
        return "".join(json.dumps({"user": user, **asdict(e)}) + "\n" for e in events)

    def _append(self, user: str, event: StoredEvent) -> None:
        history = self._users.setdefault(user, deque(maxlen=self.keep))
        history.append(event)
        if (event.timestamp is not None and len(history) > 1 and history[-2].timestamp is not None
                and history[-2].timestamp > event.timestamp):     # a late event: keep time order
            ordered = sorted(history, key=lambda e: (e.timestamp is None, e.timestamp or 0))
            history.clear()
            history.extend(ordered)

    def add(self, user_events: list[tuple[str, StoredEvent]]) -> None:
        """Append events (in the given order) and journal them before returning."""
        with self._lock:
            for user, event in user_events:
                self._append(user, event)
            if self.journal is not None:
                with self.journal.open("a") as fh:
                    fh.write("".join(self._lines(u, [e]) for u, e in user_events))
                    fh.flush()
                self._journal_lines += len(user_events)
                if self._journal_lines > self._compact_at:     # O(1) per request; O(state) per compaction
                    self._compact()

    def get(self, user: str) -> list[StoredEvent] | None:
        with self._lock:
            history = self._users.get(user)
            return None if history is None else list(history)

    def __len__(self) -> int:
        return len(self._users)
