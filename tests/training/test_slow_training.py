"""Slow tests: the training commands on the real bundled backbone, index and benchmark.

Each runs a ``--quick`` training and checks the frozen backbone's weight hash, computed
here independently, equals the one the command recorded before and after training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import user_odqa_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
INDEX = REPO / "indexes" / "wiki-vital"

@pytest.fixture(scope="module")
def env():
    """The user's ``$ODQA_HOME`` (the dequantized backbone is cached there), here and in subprocesses."""
    if not (INDEX / "manifest.json").exists():
        pytest.fail(f"{INDEX} is missing; build it with `make index` (make test does this first)")
    with user_odqa_home() as env:
        yield env


def _odqa(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odqa.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def test_train_reader_quick_on_the_real_backbone(env, tmp_path):
    """On real questions (a bundled question set; files of questions are trained on in the fast tests)."""
    out = tmp_path / "prompt"
    res = _odqa(env, "train", "reader", "--train", "trivia-wiki:train", "--dev", "trivia-wiki:dev", "--out", str(out),
                "--quick", "--prompt-length", "8")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["train"] == "trivia-wiki:train" and manifest["synthetic"] is False
    # the default pipeline's reader (pipelines/frozen_reader.yml): Gemma-3-270m, 640-d embeddings
    assert manifest["kind"] == "soft_prompt" and manifest["length"] == 8 and manifest["hidden_size"] == 640
    assert manifest["backbone"] == "gemma3-270m" and manifest["steps"] == 2
    assert "backbone hash unchanged" in res.stdout

    # the hash recorded by the command is the real backbone's, computed here on a fresh load
    from odqa.lm.backbone import load_backbone
    from odqa.lm.backbone import weights_hash

    assert weights_hash(load_backbone("gemma3-270m").model) == manifest["backbone_hash"]
