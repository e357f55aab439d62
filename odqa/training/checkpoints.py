"""Training checkpoints that survive a kill: one file, written atomically, holding the trainable
tensors, the optimizer, the step, the RNG states and the history; ``--resume`` loads it."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from odqa.errors import ArtifactMismatchError, OdqaError
from odqa.runs import atomic_write_bytes, check_replaceable

CHECKPOINT = "checkpoint.pt"


def work_dir(out: str | Path, resume: bool, what: str = "run") -> Path:
    """``OUT.work/``, beside the artifact ``out``: where a trainer keeps its checkpoint and caches.
    Without ``resume``, a checkpoint left there by an earlier ``what`` is an error, not overwritten.
    An ``out`` that exists and is not an odqa artifact is refused before any training starts."""
    out = Path(out)
    check_replaceable(out, None, "a trained artifact")
    work = out.parent / f"{out.name}.work"
    if not resume and (work / CHECKPOINT).exists():
        raise OdqaError(f"'{work}' holds a checkpoint of an earlier {what}; pass --resume to continue it, "
                        "or delete the directory to start over")
    return work


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    """``state``: plain tensors/dicts/numbers (``model``, ``optimizer``, ``step``, ``history``, ...)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {**state, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate()}}
    buf = io.BytesIO()
    torch.save(state, buf)
    path = directory / CHECKPOINT
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(directory: str | Path) -> dict | None:
    """The saved state (RNG restored), or ``None`` when there is no checkpoint yet."""
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise ArtifactMismatchError(f"checkpoint '{path}' is unreadable ({e}); delete it to start over") from None
    rng = state.get("rng")
    if rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return state
