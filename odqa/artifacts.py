"""One artifact format for every trained module: ``<name>.safetensors`` + ``manifest.json``.

The manifest says what the artifact is (``kind``), which backbone it was made for and that
backbone's weight hash, the command that made it, the data it was trained on (and whether
that data is synthetic), and its dev metrics. A directory is written whole or not at all:
it is built beside the target as ``.NAME.partial`` and renamed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from odqa.errors import ArtifactMismatchError
from odqa.runs import check_replaceable


_COMMAND: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """Record the ``odqa`` arguments being run (the CLI calls this; manifests quote it)."""
    global _COMMAND
    _COMMAND = ["odqa", *argv]


def command_line() -> str:
    """The command that is running, as a user would retype it."""
    if _COMMAND is not None:
        return shlex.join(_COMMAND)
    prog = Path(sys.argv[0]).name if sys.argv else "python"
    return shlex.join([prog, *sys.argv[1:]])


def make_manifest(kind: str, *, backbone: str | None, backbone_hash: str | None, data: dict,
                  dev_metrics: dict, **extra) -> dict:
    """:param data: e.g. ``{"train": "synthetic-cloze (wiki-vital)", "synthetic": True, "examples": 2000}``."""
    import odqa

    return {
        "kind": kind,
        "backbone": backbone,
        "backbone_hash": backbone_hash,
        "command": command_line(),
        "data": data,
        "dev_metrics": dev_metrics,
        "odqa_version": getattr(odqa, "__version__", "0"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


class ArtifactWriter:
    """Write an artifact directory atomically.

        with ArtifactWriter(out) as tmp:
            save_file(tensors, tmp / "soft_prompt.safetensors")
            write_manifest(tmp, manifest)
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.tmp = self.out.parent / f".{self.out.name}.partial"

    def __enter__(self) -> Path:
        check_replaceable(self.out, None, "a trained artifact")  # only an artifact (a manifest's kind) is replaced
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.out.parent / f".{self.out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    path = Path(directory) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """The manifest of an artifact dir ({} when it has none); checks ``kind`` when given."""
    path = Path(directory) / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ArtifactMismatchError(f"artifact manifest '{path}' is not valid JSON ({e}); re-create the artifact") from None
    if kind and manifest.get("kind") not in (None, kind):
        raise ArtifactMismatchError(
            f"artifact '{directory}' is a '{manifest.get('kind')}', not a '{kind}'; pass a {kind} artifact"
        )
    return manifest


def check_backbone(manifest: dict, what: str, backbone_name: str, hidden_size: int) -> None:
    """Refuse an artifact made for another backbone or another hidden size."""
    made_for = manifest.get("backbone")
    if made_for and made_for != backbone_name:
        raise ArtifactMismatchError(
            f"{what} was trained for backbone '{made_for}', but this pipeline uses '{backbone_name}'; "
            f"set the model to '{made_for}' or train one for '{backbone_name}'"
        )
    size = manifest.get("hidden_size")
    if size is not None and int(size) != int(hidden_size):
        raise ArtifactMismatchError(
            f"{what} has hidden size {size}, but backbone '{backbone_name}' has {hidden_size}; "
            "it was made for another model"
        )
