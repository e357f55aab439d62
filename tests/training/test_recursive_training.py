"""Training of the recursive closed-book modes on the tiny random Llama and the 30-passage corpus."""

from __future__ import annotations

import json

import pytest
import torch

from odqa.errors import OdqaError, PipelineConfigError, TrainingDataError
from odqa.lm.backbone import weights_hash
from odqa.training.recursive import RecursiveTrainConfig, embeds_loss, train_recursive

TRAIN = [
    {"id": f"t{i}", "question": q, "answers": [a]}
    for i, (q, a) in enumerate([
        ("Who wrote Romeo and Juliet?", "William Shakespeare"),
        ("What is the capital of Australia?", "Canberra"),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
        ("Who discovered penicillin?", "Alexander Fleming"),
    ])
]
DEV = [{"id": "d0", "question": "Which planet is the Red Planet?", "answers": ["Mars"]},
       {"id": "d1", "question": "Where is the Eiffel Tower?", "answers": ["Paris"]}]
SOURCE = {"train": "real: hand-written test questions", "synthetic": False}


@pytest.fixture
def config(corpus_jsonl):
    def make(**kw) -> RecursiveTrainConfig:
        base = dict(prompt_length=3, batch_size=2, epochs=1, eval_every=1, save_every=1, patience=10, warmup_steps=1,
                    max_new_tokens=3, num_candidates=3, temperature=1.0, bottleneck=8, pretrain_steps=2,
                    pretrain_batch_size=2, chunk_tokens=4, pretrain_dev_chunks=2, pretrain_corpus=corpus_jsonl)
        return RecursiveTrainConfig(**{**base, **kw})

    return make


@pytest.fixture(scope="module")
def first_prompt(tiny_lm, tmp_path_factory, corpus_jsonl):
    """A one-pass prompt trained here (2 steps), the pass 1 of the two-pass modes."""
    out = tmp_path_factory.mktemp("art") / "one-pass"
    cfg = RecursiveTrainConfig(prompt_length=3, batch_size=2, epochs=1, eval_every=2, max_new_tokens=3)
    train_recursive("one-pass", tiny_lm, TRAIN, DEV, out, cfg, SOURCE, progress=False)
    return str(out)


def test_one_pass_writes_a_soft_prompt_and_keeps_the_backbone(tiny_lm, backbone, tmp_path, config):
    before = weights_hash(backbone.model)
    out = tmp_path / "one"
    m = train_recursive("one-pass", tiny_lm, TRAIN, DEV, out, config(), SOURCE, progress=False)
    assert weights_hash(backbone.model) == before == m["backbone_hash"]
    assert {p.name for p in out.iterdir()} == {"soft_prompt.safetensors", "manifest.json", "curves.png"}
    assert m["kind"] == "soft_prompt" and m["length"] == 3 and m["steps"] == 2 and m["trainable_params"] == 3 * 32
    assert m["data"]["train"].startswith("real:") and [d["step"] for d in m["dev_metrics"]["curve"]] == [1, 2]
    assert m["command"] and m["train_seconds"] >= 0 and "first_prompt" not in m


def test_textual_caches_candidates_once_and_keeps_the_backbone(tiny_lm, backbone, tmp_path, config, first_prompt):
    before = weights_hash(backbone.model)
    out = tmp_path / "textual"
    m = train_recursive("textual", tiny_lm, TRAIN, DEV, out, config(max_steps=1), SOURCE, first_prompt=first_prompt,
                        progress=False)
    assert weights_hash(backbone.model) == before == m["backbone_hash"]
    work = tmp_path / "textual.work"
    recs = [json.loads(line) for line in (work / "candidates-train.jsonl").read_text().splitlines()]
    assert len(recs) == len(TRAIN) and all(1 <= len(r["candidates"]) <= 3 for r in recs)
    assert m["first_prompt"] == first_prompt and len(m["first_prompt_sha256"]) == 64
    assert 0 <= m["candidates"]["train_answer_in_candidates"] <= 100
    # resume: the candidates are read back, not sampled again
    m2 = train_recursive("textual", tiny_lm, TRAIN, DEV, out, config(max_steps=2), SOURCE, first_prompt=first_prompt,
                         resume=True, progress=False)
    assert m2["steps"] == 2 and (work / "candidates-train.jsonl").read_text().count("\n") == len(TRAIN)


def test_neural_pretrains_the_connector_then_trains_on_the_task(tiny_lm, backbone, tmp_path, config, first_prompt):
    from odqa.lm.connector import CONNECTOR, Connector

    before = weights_hash(backbone.model)
    out, conn = tmp_path / "neural", tmp_path / "connector-lm"
    m = train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=2), SOURCE, first_prompt=first_prompt,
                        connector_dir=str(conn), progress=False)
    assert weights_hash(backbone.model) == before == m["backbone_hash"]
    pre = json.loads((conn / "manifest.json").read_text())
    assert pre["kind"] == "connector" and pre["backbone_hash"] == before and pre["steps"] == 2
    assert set(pre["dev_metrics"]["best"]) >= {"loss", "loss_no_context", "loss_text_context"}
    assert m["kind"] == "neural_recursion" and m["pretrained_connector"]["path"] == str(conn)
    assert {p.name for p in out.iterdir()} == {CONNECTOR, "soft_prompt.safetensors", "manifest.json", "curves.png"}
    assert m["trainable_params"] == 3 * 32 + Connector(32, 8).num_parameters
    # the task training moved the pre-trained connector
    assert not torch.equal(Connector.load(out).up.weight, Connector.load(conn).up.weight)
    # a second task run reuses the pre-trained connector instead of pre-training again
    stamp = (conn / CONNECTOR).stat().st_mtime_ns
    train_recursive("neural", tiny_lm, TRAIN, DEV, tmp_path / "neural2", config(max_steps=1), SOURCE,
                    first_prompt=first_prompt, connector_dir=str(conn), progress=False)
    assert (conn / CONNECTOR).stat().st_mtime_ns == stamp


def test_neural_without_pretraining_keeps_the_backbone(tiny_lm, backbone, tmp_path, config, first_prompt):
    before = weights_hash(backbone.model)
    m = train_recursive("neural", tiny_lm, TRAIN, DEV, tmp_path / "np", config(max_steps=1, pretrain=False), SOURCE,
                        first_prompt=first_prompt, progress=False)
    assert weights_hash(backbone.model) == before == m["backbone_hash"]
    assert m["pretrained_connector"] is None and not list(tmp_path.glob("connector-lm-*"))


def test_pass_two_prompt_starts_from_pass_one(tiny_lm, tmp_path, config, first_prompt):
    from odqa.lm.soft_prompt import SoftPrompt

    m = train_recursive("neural", tiny_lm, TRAIN, DEV, tmp_path / "warm", config(max_steps=1, pretrain=False, lr=0.0),
                        SOURCE, first_prompt=first_prompt, progress=False)
    assert m["steps"] == 1
    assert torch.equal(SoftPrompt.load(tmp_path / "warm", tiny_lm, 32).prompt, SoftPrompt.load(first_prompt, tiny_lm, 32).prompt)


def test_resume_continues_from_the_checkpoint(tiny_lm, tmp_path, config, first_prompt):
    out = tmp_path / "neural"
    kw = dict(first_prompt=first_prompt, progress=False)
    first = train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=1, pretrain=False), SOURCE, **kw)
    assert first["steps"] == 1
    with pytest.raises(OdqaError, match="pass --resume"):
        train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=2, pretrain=False), SOURCE, **kw)
    second = train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=2, pretrain=False), SOURCE,
                             resume=True, **kw)
    assert second["steps"] == 2 and [d["step"] for d in second["dev_metrics"]["curve"]] == [1, 2]
    lines = (tmp_path / "neural.work" / "first-pass-train.jsonl").read_text().splitlines()
    assert len(lines) == len(TRAIN)  # pass 1 ran once


def test_a_new_pass_one_remakes_the_caches_and_refuses_the_old_checkpoint(tiny_lm, tmp_path, config, first_prompt):
    import shutil

    out, work = tmp_path / "neural", tmp_path / "neural.work"
    kw = dict(progress=False)
    train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=1, pretrain=False), SOURCE,
                    first_prompt=first_prompt, **kw)
    cache = work / "first-pass-train.jsonl"
    # a re-trained pass-1 prompt (here: another prompt file) must not read the old answers back
    other = tmp_path / "other-prompt"
    shutil.copytree(first_prompt, other)
    from odqa.lm.soft_prompt import SoftPrompt

    sp = SoftPrompt.load(other, tiny_lm, 32)
    SoftPrompt(sp.prompt.detach() + 1.0).save(other, json.loads((other / "manifest.json").read_text()))
    with pytest.raises(OdqaError, match=r"checkpoint trained with another pass 1 \(changed: first_prompt_sha256\).*delete"):
        train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=2, pretrain=False), SOURCE,
                        first_prompt=str(other), resume=True, **kw)
    (work / "checkpoint.pt").unlink()  # no checkpoint: the stale caches are made again
    cache.write_text(cache.read_text().replace('"first_answer": "', '"first_answer": "STALE '))
    train_recursive("neural", tiny_lm, TRAIN, DEV, out, config(max_steps=1, pretrain=False), SOURCE,
                    first_prompt=str(other), resume=True, **kw)
    assert "STALE" not in cache.read_text() and cache.read_text().count("\n") == len(TRAIN)
    assert json.loads((work / "pass1.json").read_text())["first_prompt_sha256"] == \
        json.loads((out / "manifest.json").read_text())["first_prompt_sha256"]


def test_embeds_loss_trains_only_what_it_is_given(backbone):
    from odqa.lm.connector import Connector

    model = backbone.model
    connector = Connector.for_backbone(model, backbone.tokenizer, 8)
    h = torch.randn(4, 32)
    e = torch.cat([connector(h), model.get_input_embeddings()(torch.tensor([5, 6, 7]))])
    loss = embeds_loss(model, None, [(e, torch.tensor([-100] * 4 + [5, 6, 7]))])
    loss.backward()
    assert connector.up.weight.grad is not None and connector.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("mode, kw, error, message", [
    ("two-pass", {}, OdqaError, "unknown mode 'two-pass'"),
    ("textual", {}, OdqaError, "--mode textual needs --first-prompt DIR"),
    ("neural", {}, OdqaError, "--mode neural needs --first-prompt DIR"),
])
def test_bad_modes_are_refused(tiny_lm, tmp_path, config, mode, kw, error, message):
    with pytest.raises(error, match=message):
        train_recursive(mode, tiny_lm, TRAIN, DEV, tmp_path / "x", config(), SOURCE, progress=False, **kw)


def test_bad_sampling_and_empty_data_are_refused(tiny_lm, tmp_path, config, first_prompt):
    with pytest.raises(PipelineConfigError, match="temperature must be above 0"):
        train_recursive("textual", tiny_lm, TRAIN, DEV, tmp_path / "x", config(temperature=0.0), SOURCE,
                        first_prompt=first_prompt, progress=False)
    with pytest.raises(TrainingDataError, match="no training questions"):
        train_recursive("one-pass", tiny_lm, [], DEV, tmp_path / "y", config(), SOURCE, progress=False)


def test_cli_refuses_no_pretrain_outside_neural(capsys, tmp_path):
    from odqa.cli import main

    code = main(["train", "recursive", "--mode", "textual", "--no-pretrain", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "error: --no-pretrain applies to --mode neural only" in capsys.readouterr().err


# --- slow: the command on the real bundled backbone ------------------------------------------------
@pytest.fixture(scope="module")
def real_env():
    """The user's ``$ODQA_HOME`` (the dequantized backbone is cached there), for the subprocesses."""
    from conftest import user_env

    return user_env()


def _odqa(env, *args):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "odqa.cli", *args], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def real_one_pass(real_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "one-pass"
    res = _odqa(real_env, "train", "recursive", "--mode", "one-pass", "--out", str(out), "--quick")
    assert res.returncode == 0, res.stderr[-2000:]
    return out, res


@pytest.fixture(scope="module")
def real_hash(real_env) -> str:
    """The real backbone's hash, computed once in a fresh process (no state shared with the
    commands, which each record the hash they found before and after training)."""
    import subprocess
    import sys

    code = ("from odqa.lm.backbone import load_backbone; from odqa.lm.backbone import weights_hash; "
            "print(weights_hash(load_backbone('smollm2-135m-instruct').model))")
    return subprocess.run([sys.executable, "-c", code], env=real_env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_real_one_pass_quick_keeps_the_backbone(real_hash, real_one_pass):
    out, res = real_one_pass
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "soft_prompt" and m["hidden_size"] == 576 and m["steps"] == 2
    assert m["data"]["train"] == "real: fanoutqa-closedbook:train" and "backbone hash unchanged" in res.stdout
    assert real_hash == m["backbone_hash"]


@pytest.mark.slow
def test_real_textual_quick_keeps_the_backbone(real_env, real_hash, real_one_pass, tmp_path):
    first, _ = real_one_pass
    out = tmp_path / "textual"
    res = _odqa(real_env, "train", "recursive", "--mode", "textual", "--first-prompt", str(first), "--out", str(out),
                "--quick")
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["first_prompt"] == str(first) and m["config"]["num_candidates"] == 2
    assert real_hash == m["backbone_hash"]


@pytest.mark.slow
def test_real_neural_quick_pretrains_and_keeps_the_backbone(real_env, real_hash, real_one_pass, tmp_path):
    first, _ = real_one_pass
    out, conn = tmp_path / "neural", tmp_path / "connector"
    res = _odqa(real_env, "train", "recursive", "--mode", "neural", "--first-prompt", str(first), "--out", str(out),
                "--connector", str(conn), "--quick")
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    pre = json.loads((conn / "manifest.json").read_text())
    assert pre["kind"] == "connector" and pre["data"]["train"].startswith("real: corpus wiki-vital")
    assert m["pretrained_connector"]["path"] == str(conn)
    assert real_hash == m["backbone_hash"] == pre["backbone_hash"]
