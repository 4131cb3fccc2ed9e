"""File access for the readers, and where an error is: existence, gzip, UTF-8 decoding and the
physical line of a record, so that every :class:`~behavior_lm.errors.DataError` names the file and
line."""
from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from behavior_lm.errors import DataError


PathLike = str | os.PathLike

def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(path))
    if not p.is_file():
        raise DataError("not a regular file", path=str(path))
    return p

def _is_gz(p: Path) -> bool:
    return p.suffix.lower() == ".gz"

def _base_name(p: Path) -> str:
    """Lower-cased file name without a trailing ``.gz``."""
    name = p.name.lower()
    return name[:-3] if name.endswith(".gz") else name

def _suffix(p: Path) -> str:
    return Path(_base_name(p)).suffix

def _open_text(p: Path, newline: str | None = None) -> io.TextIOBase:
    if _is_gz(p):
        return gzip.open(p, "rt", encoding="utf-8-sig", newline=newline)  # type: ignore[return-value]
    return open(p, encoding="utf-8-sig", newline=newline)

def _open_binary(p: Path) -> io.BufferedIOBase:
    return gzip.open(p, "rb") if _is_gz(p) else open(p, "rb")  # type: ignore[return-value]

class _reading:
    """Context manager: turn decoding / decompression failures into a located DataError."""

    def __init__(self, p: Path) -> None:
        self.p = p

    def __enter__(self) -> "_reading":
        return self

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, DataError):
            return False
        if isinstance(exc, UnicodeDecodeError):
            line = _locate_bad_utf8(self.p)
            raise DataError(f"not valid UTF-8 text ({exc.reason})", path=str(self.p),
                            line=line) from None
        if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise DataError(f"cannot decompress gzip file: {exc}", path=str(self.p)) from None
        if isinstance(exc, OSError) and _is_gz(self.p):
            raise DataError(f"cannot read gzip file: {exc}", path=str(self.p)) from None
        return False

def _locate_bad_utf8(p: Path) -> int | None:
    try:
        with _open_binary(p) as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return n
    except (OSError, EOFError, zlib.error):
        return None
    return None

def _count_lines(p: Path) -> int:
    """Physical lines in the file (a last line without a newline counts)."""
    n = 0
    last = b"\n"
    with _open_binary(p) as fh:
        while True:
            block = fh.read(1 << 24)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)

def _line_text(p: Path, line: int) -> str:
    with _open_text(p, newline="") as fh:
        for n, text in enumerate(fh, 1):
            if n == line:
                return text.rstrip("\r\n")
    return ""

def _empty(p: Path, detail: str = "no events") -> DataError:
    return DataError(f"empty log: {detail}", path=str(p))

def _list(names: Sequence[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) if len(names) else "(none)"
