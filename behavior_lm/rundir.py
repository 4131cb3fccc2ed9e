"""The run directory's lifecycle: the ``.partial`` folder, the writer's lock, checkpoints that can be
resumed, promotion, and the one atomic-write helper every module uses.

A run writes everything into ``<output_dir>.partial`` and renames it to ``<output_dir>`` when it is
complete, so a crash never leaves a half run that looks finished. One process at a time may write a
run: ``<output_dir>.lock`` holds the writer's pid (a lock whose process is gone is stale and taken
over). Only imports from below (``errors``), so data preparation, training and the Hub push share it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from behavior_lm.errors import RecipeError


def partial_of(final: Path) -> Path:
    """Where a run is written before it is complete."""
    return final.with_name(final.name + ".partial")


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_dir(target: Path) -> contextlib.AbstractContextManager[Path]:
    """``with atomic_dir(target) as tmp:`` fill ``tmp``; on success it replaces ``target``."""

    @contextlib.contextmanager
    def swap() -> Iterator[Path]:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            yield tmp
            promote(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    return swap()


def promote(partial: Path, final: Path) -> None:
    """Swap a finished folder into place (replacing an old one last)."""
    old = None
    if final.exists():
        old = final.with_name(final.name + f".old-{int(time.time())}-{os.getpid()}")
        final.rename(old)
    partial.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(folder: Path, what: str) -> None:
    """Refuse early, in one line, a folder this run cannot write (read-only, or a file)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RecipeError(f"{what} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RecipeError(f"{what} {folder}: cannot write there ({probe} is not writable)")


def check_output_dir(final: Path, overwrite: bool) -> None:
    """The output directory may be new, or a finished run when ``overwrite`` is set; never a file."""
    if final.exists() and not final.is_dir():
        raise RecipeError(f"output_dir {final} is an existing file; choose a folder")
    if (final / "metrics.json").is_file() and not overwrite:
        raise RecipeError(f"{final} already holds a finished run; pass --overwrite_output_dir true "
                          "or choose another --output_dir")
    if final.is_dir() and any(final.iterdir()) and not (final / "metrics.json").is_file():
        raise RecipeError(f"output_dir {final} is a folder that holds something other than a run; "
                          "choose an empty or new folder")
    check_writable(final.parent, "output_dir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def writer_lock(final: Path) -> Iterator[None]:
    """Hold ``<output_dir>.lock`` while writing a run; a second writer is refused in one line.
    A lock left by a process that no longer exists is stale and taken over."""
    lock = final.with_name(final.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise RecipeError(f"output_dir {final} is being written by another run (pid {pid}, "
                                  f"{lock}); wait for it or choose another --output_dir") from None
            lock.unlink(missing_ok=True)                    # stale: its writer is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise RecipeError(f"output_dir {final}: could not take {lock}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def safetensors_complete(path: Path) -> bool:
    """True when a ``.safetensors`` file holds every byte its header promises (a crash or a full
    disk while saving leaves a truncated file that ``trainer_state.json`` does not reveal)."""
    try:
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except (OSError, struct.error, ValueError):
        return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return path.stat().st_size >= 8 + n + end


def checkpoint_complete(path: Path) -> bool:
    """A Trainer checkpoint that can be resumed: its state parses and its weights are whole."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = sorted(path.glob("*.safetensors"))
    return bool(weights) and all(safetensors_complete(w) for w in weights)


def last_complete_checkpoint(folder: Path) -> str | None:
    """Newest ``checkpoint-N`` that :func:`checkpoint_complete` accepts; incomplete ones are
    skipped, so a resume falls back to the previous complete checkpoint."""
    found = []
    for path in folder.glob("checkpoint-*"):
        try:
            found.append((int(path.name.rsplit("-", 1)[1]), path))
        except ValueError:
            continue
    for _, path in sorted(found, reverse=True):
        if checkpoint_complete(path):
            return str(path)
    return None
