"""What the benchmark scripts share: the report's command line, and printing and writing it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from odqa.runs import atomic_write_bytes


def command() -> str:
    """The command that is running, as a reader of the report would retype it."""
    return f"python {' '.join(shlex.quote(a) for a in sys.argv)}"


def publish(lines: list[str], out: str | Path) -> int:
    """Print the report and write it to ``out`` (atomically: a killed run leaves the old one)."""
    text = "\n".join(lines) + "\n"
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), text.encode("utf-8"))
    return 0
