"""Slow tests: the bundled multitask mixture, and ``odqa train idpt --quick`` on the real backbone
and encoder, whose weight hashes (computed here independently) must equal the recorded ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import user_odqa_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env():
    """The user's ``$ODQA_HOME`` (the dequantized backbone is cached there), here and in subprocesses."""
    with user_odqa_home() as env:
        yield env


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, env) -> Path:
    out = tmp_path_factory.mktemp("mix") / "wiki-mixture"
    done = subprocess.run([sys.executable, "-m", "odqa.cli", "data", "multitask", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_bundled_mixture_splits_and_held_out_kind(mixture):
    from odqa.data.questions import fanoutqa_closedbook, split_of
    from odqa.data.multitask import read_multitask, wiki_split

    splits = {s: read_multitask(mixture, s) for s in ("train", "dev", "test")}
    assert {e.task for e in splits["train"]} == {"topic", "description", "cloze", "closedbook"}
    assert {e.task for e in splits["test"]} == {"topic", "description", "cloze", "closedbook", "subject"}
    assert not [e for e in splits["train"] + splits["dev"] if e.held_out or e.task == "subject"]
    roots = {q.id: q.root_id for q in fanoutqa_closedbook()}
    for split, examples in splits.items():
        assert len({e.id for e in examples}) == len(examples)
        for e in examples:
            if e.task == "closedbook":
                qid = e.id.split("-", 1)[1].rsplit("-", 1)[0]  # closedbook-<question id>-<n>
                assert split_of(roots[qid]) == split  # fanoutqa-closedbook's own splits
            elif e.task != "cloze":
                assert wiki_split(e.id.split("-", 1)[1]) == split
    counts = json.loads((mixture / "manifest.json").read_text())["counts"]
    assert counts["train"]["topic"] == 300 and counts["test"]["subject"] == 60


def test_train_idpt_quick_on_the_real_models(mixture, env, tmp_path):
    out = tmp_path / "idpt"
    done = subprocess.run([sys.executable, "-m", "odqa.cli", "train", "idpt", "--quick", "--data", str(mixture),
                           "--out", str(out), "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "idpt_generator" and manifest["steps"] == 2
    assert manifest["encoder"] == "minilm-l6" and manifest["hidden_size"] == 576

    from odqa.components.idpt import IDPTLM, load_encoder
    from odqa.lm.backbone import load_backbone
    from odqa.lm.backbone import weights_hash

    assert weights_hash(load_backbone("smollm2-135m-instruct").model) == manifest["backbone_hash"]
    assert weights_hash(load_encoder("minilm-l6")[0]) == manifest["encoder_hash"]
    answer = IDPTLM(artifact=str(out), max_new_tokens=4).run(query="Paris is the capital of France.", task="topic")
    assert isinstance(answer["answers"][0].data, str)
