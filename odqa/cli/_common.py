"""What the command families share: where the repository and its default pipeline are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_PIPELINE = REPO / "pipelines" / "frozen_reader.yml"
