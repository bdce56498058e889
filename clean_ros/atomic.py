"""Atomic file writes: a temporary file in the same folder, then a rename, so a crash or Ctrl-C never leaves a
half-written output (the file is either the old one or the complete new one).

    atomic_write_bytes(path, data) / atomic_write_text(path, text) / atomic_write_json(path, obj)
    with atomic_open(path, "wb") as f:        # for writers that take a file object
        torch.save(obj, f)                     # or fig.savefig(f, format="png"), np.savez(f, ...), csv.writer(f)
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _temp_name(path: Path) -> Path:
    # a per-process name opened normally (not mkstemp): the file gets the usual umask permissions, not 0600
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, fsync: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing (open()'s mode and keywords, e.g. "w", newline="").

    When the block ends normally the file is closed and renamed onto `path` (replacing it in one step); when it
    raises, the temporary file is removed and `path` is left as it was. fsync=True flushes the data to disk before
    the rename (for records that must survive a power cut)."""
    if not any(flag in mode for flag in "wx"):
        raise ValueError(f"atomic_open: mode {mode!r} does not write a new file (use 'w' or 'wb')")
    path = Path(path)
    tmp = _temp_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]
