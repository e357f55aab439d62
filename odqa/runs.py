"""Append-only jsonl run files that survive a kill: each record is flushed and fsynced, and a
half-written last line is dropped on the next start, so a rerun resumes without recomputing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` all at once: a temp file beside it (per process), fsync, then rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_records(path: Path) -> list[dict]:
    """Complete records of a run file; a torn last line (a kill mid-write) is cut off the file."""
    if not path.exists():
        return []
    records, good = [], []
    raw = path.read_bytes()
    for line in raw.splitlines(keepends=True):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            break
        records.append(rec)
        good.append(line if line.endswith(b"\n") else line + b"\n")
    if b"".join(good) != raw:
        atomic_write_bytes(path, b"".join(good))
    return records


class RunWriter:
    """Appends one JSON record per line, durably."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
