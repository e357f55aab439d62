"""Outputs that survive a kill and never clobber what is not odqa's.

- Append-only jsonl run files: each record is flushed and fsynced, and a half-written last line
  is dropped on the next start, so a rerun resumes without recomputing.
- :func:`check_replaceable`: odqa overwrites or deletes only what it made (an index, an artifact,
  an evaluation run), told by the ``kind`` its ``manifest.json`` / ``run.json`` declares.
- :class:`OutputLock`: one writer per output at a time; a lock left by a dead process is taken over.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from odqa.errors import OutputExistsError, OutputLockedError

log = logging.getLogger("odqa")


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
    """Complete records of a run file; a torn last line (a kill mid-write) is cut off the file.

    Any other line that is not an odqa record means the file is not a run file: it is refused
    (:class:`~odqa.errors.OutputExistsError`), never truncated.
    """
    if not path.exists():
        return []
    if not path.is_file():
        raise OutputExistsError(f"'{path}' is not a file; name a .jsonl file for the answers")
    records = []
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    for lineno, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            if lineno == len(lines) and not line.endswith(b"\n"):  # torn by a kill mid-write
                atomic_write_bytes(path, b"".join(lines[:-1]))
                break
            raise OutputExistsError(
                f"'{path}' is not an odqa run file (line {lineno} is not an odqa record); odqa appends to "
                "its own run files only: choose another --out") from None
        records.append(rec)
    else:
        if raw and not raw.endswith(b"\n"):  # a kill between a record and its newline
            atomic_write_bytes(path, raw + b"\n")
    return records


# --- what odqa may replace -----------------------------------------------------------------
INDEX_KIND = "odqa-index"
EVAL_RUN_KIND = "odqa-eval-run"


def declared_kind(path: Path) -> str | None:
    """The ``kind`` an odqa output directory declares in ``manifest.json`` (indexes, trained
    artifacts) or ``run.json`` (evaluation runs); ``None`` for anything else."""
    for name in ("manifest.json", "run.json"):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            return data["kind"]
        if name == "run.json" and isinstance(data, dict) and "pipeline_sha256" in data:
            return EVAL_RUN_KIND  # written before run.json carried its kind
    return None


def check_replaceable(path: str | Path, kinds: tuple[str, ...] | None, what: str) -> None:
    """Refuse to overwrite or delete ``path`` unless it is absent, an empty directory, or an odqa
    output of one of ``kinds`` (``None``: a trained artifact of any kind, not an index or a run).

    :param what: What odqa would write there, for the message (e.g. ``"an index"``).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        try:
            if not any(path.iterdir()):
                return
        except OSError:
            pass
        kind = declared_kind(path)
        if kind is not None and (kind in kinds if kinds else kind not in (INDEX_KIND, EVAL_RUN_KIND)):
            return
        found = f"an odqa '{kind}'" if kind else "not made by odqa"
    else:
        found = "a file" if path.is_file() else "not a directory"
    raise OutputExistsError(
        f"'{path}' exists and is {found}; odqa writes {what} only into a new or empty directory or over "
        f"{what} it made itself, so it leaves '{path}' alone: choose another --out")


# --- one writer at a time --------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class OutputLock:
    """Hold ``.NAME.lock`` beside ``target`` (a file or a directory) while writing it.

    The lock is an ``flock`` on that file, so it is released when its process dies; the file
    also records the owner's PID and host, for the message a second writer gets. A lock file
    left by a process that died (``kill -9``, power loss) is taken over with a warning.

        with OutputLock(out):
            ...write out...
    """

    def __init__(self, target: str | Path):
        self.target = Path(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                who = f"PID {owner.get('pid', '?')} on {owner.get('host', '?')}" if owner else "another process"
                raise OutputLockedError(
                    f"'{self.target}' is being written by another odqa process ({who}); wait for it to "
                    f"finish, or choose another --out") from None
            try:  # the file may have been removed by its last owner between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = self._owner(fd)
        if stale and stale.get("pid") != os.getpid():
            state = "no longer running" if not _alive(int(stale.get("pid", 0))) else "its lock released"
            log.warning("took over the lock on '%s' left by PID %s on %s (%s)", self.target,
                        stale.get("pid"), stale.get("host"), state)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def _owner(fd: int) -> dict:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # a clean exit leaves nothing; only a crash leaves a (stale) file
        except FileNotFoundError:
            pass
        os.close(self._fd)  # releases the flock
        self._fd = None


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
