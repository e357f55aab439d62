"""``odqa train idpt`` on the tiny random Llama and the tiny BERT encoder: every mode, frozen
weights, artifacts, resume, the fine-tuned copy's location, and ``odqa eval idpt``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from odqa.errors import OdqaError, TrainingDataError
from odqa.lm.backbone import load_backbone, weights_hash
from odqa.lm.tasks import TOPICS
from odqa.data import multitask as mt
from odqa.training.idpt import IDPTTrainConfig, check_finetune_out, train_idpt

from conftest import CORPUS

SOURCE = {"train": "hand-made tiny mixture", "synthetic": False}


def _mixture(directory: Path) -> Path:
    """A tiny mixture from the test corpus: topic + closedbook trained, subject held out (test only)."""
    rng = random.Random(0)
    splits: dict[str, list] = {"train": [], "dev": [], "test": []}
    for i, p in enumerate(CORPUS):
        split = "train" if i < 20 else "dev" if i < 25 else "test"
        splits[split].append(mt._make("topic", p["id"], {"text": p["text"]}, [TOPICS[i % 11]], rng))
        splits[split].append(mt._make("closedbook", p["id"], {"text": f"What is {p['title']}?"}, [p["title"]], rng))
        if split == "test":
            masked = mt.mask_subject(p["text"], p["title"]) or p["text"]
            splits[split].append(mt._make("subject", p["id"], {"text": masked}, [p["title"]], rng))
    for split, examples in splits.items():
        mt.write_multitask(directory / f"{split}.jsonl", examples)
    return directory


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    return _mixture(tmp_path_factory.mktemp("mixture"))


def _config(mode: str, encoder: str, **kw) -> IDPTTrainConfig:
    base = dict(mode=mode, prompt_length=3, encoder=encoder, encoder_prompt_length=2, attn_dim=8, heads=2, max_steps=4,
                batch_size=4, eval_every=2, save_every=1, dev_per_task=2, max_new_tokens=2, warmup_steps=1)
    return IDPTTrainConfig(**{**base, **kw})


def _train(mixture, out, config, lm, **kw):
    return train_idpt(mt.read_multitask(mixture, "train"), mt.read_multitask(mixture, "dev"), out, config, lm, SOURCE,
                      progress=False, **kw)


def test_idpt_trains_only_the_generator(mixture, tmp_path, tiny_lm, bare_bert):
    from odqa.components.idpt import IDPTLM, load_encoder

    backbone = load_backbone(tiny_lm)
    encoder, _ = load_encoder(bare_bert)
    lm_before, enc_before = weights_hash(backbone.model), weights_hash(encoder)
    out = tmp_path / "idpt"
    m = _train(mixture, out, _config("idpt", bare_bert), tiny_lm)
    assert weights_hash(backbone.model) == lm_before == m["backbone_hash"]
    assert weights_hash(encoder) == enc_before == m["encoder_hash"]
    assert {p.name for p in out.iterdir()} == {"prompt_generator.safetensors", "manifest.json", "curves.png"}
    assert m["kind"] == "idpt_generator" and m["mode"] == "idpt" and m["steps"] == 4
    assert m["prompt_length"] == 3 and m["hidden_size"] == 32
    assert set(m["trainable_params"]) == {"encoder_prompt", "cross_attention", "projection", "total"}
    assert m["frozen_params"]["encoder"] > 0 and m["trainable_percent_of_lm"] > 0
    assert [d["step"] for d in m["dev_metrics"]["curve"]] == [2, 4]
    assert set(m["dev_metrics"]["best"]["tasks"]) == {"topic", "closedbook"}  # the held-out task is never scored
    assert m["data"]["train_tasks"] == ["closedbook", "topic"] and m["data"]["train_examples"] == 40
    answer = IDPTLM(model=tiny_lm, artifact=str(out), max_new_tokens=2).run(query="Mars is red.", task="topic")
    assert answer["answers"][0].meta["system"] == "idpt_generator"


def test_plain_prompt_mode(mixture, tmp_path, tiny_lm, bare_bert):
    from odqa.lm.soft_prompt import SoftPrompt

    out = tmp_path / "prompt"
    m = _train(mixture, out, _config("prompt", bare_bert), tiny_lm)
    assert m["kind"] == "soft_prompt" and m["trainable_params"] == {"total": 3 * 32}
    assert SoftPrompt.load(out, tiny_lm, 32).length == 3


def test_finetune_mode_trains_a_copy(mixture, tmp_path, tiny_lm, bare_bert):
    backbone = load_backbone(tiny_lm)
    before = weights_hash(backbone.model)
    out = tmp_path / "finetuned"
    m = _train(mixture, out, _config("finetune", bare_bert, lr=1e-2), tiny_lm)
    assert weights_hash(backbone.model) == before == m["backbone_hash"]  # the shared backbone never moved
    assert m["kind"] == "finetuned_lm" and m["finetuned_hash"] != before
    assert m["trainable_params"]["total"] == sum(p.numel() for p in backbone.model.parameters())
    assert (out / "config.json").exists() and (out / "curves.png").exists()
    assert all(not p.requires_grad for p in backbone.model.parameters())


def test_finetune_refuses_the_repo_and_the_backbone(tiny_lm):
    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(OdqaError, match="is inside the repository; a fine-tuned backbone"):
        check_finetune_out(repo / "pipelines" / "artifacts" / "ft", tiny_lm)
    with pytest.raises(OdqaError, match="is the backbone's own directory"):
        check_finetune_out(Path(tiny_lm), tiny_lm)
    with pytest.raises(OdqaError, match="is the backbone's own directory"):
        check_finetune_out(Path(tiny_lm) / "sub", tiny_lm)


def test_finetune_cli_refuses_an_out_in_the_repo(mixture, capsys):
    from odqa.cli import main

    assert main(["train", "idpt", "--mode", "finetune", "--data", str(mixture), "--out", "pipelines/artifacts/ft"]) == 2
    assert "inside the repository" in capsys.readouterr().err


def test_resume_continues_from_the_checkpoint(mixture, tmp_path, tiny_lm, bare_bert):
    out = tmp_path / "idpt"
    first = _train(mixture, out, _config("idpt", bare_bert, max_steps=2), tiny_lm)
    assert first["steps"] == 2
    with pytest.raises(OdqaError, match="pass --resume"):
        _train(mixture, out, _config("idpt", bare_bert, max_steps=2), tiny_lm)
    with pytest.raises(OdqaError, match="made with other settings"):
        _train(mixture, out, _config("idpt", bare_bert, max_steps=4), tiny_lm, resume=True)
    # same settings: the run goes on from its last checkpoint (here: already at its last step)
    again = _train(mixture, out, _config("idpt", bare_bert, max_steps=2), tiny_lm, resume=True)
    assert again["steps"] == 2 and [d["step"] for d in again["dev_metrics"]["curve"]] == [2]


def test_resume_after_a_kill(mixture, tmp_path, tiny_lm, bare_bert, monkeypatch):
    import odqa.training.loop as loop

    out = tmp_path / "idpt"
    calls = {"n": 0}
    real = loop.save_checkpoint

    def dies_after_two(work, state):  # simulate a kill right after the 2nd step's checkpoint
        real(work, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        _train(mixture, out, _config("idpt", bare_bert), tiny_lm)
    assert not out.exists()
    monkeypatch.setattr(loop, "save_checkpoint", real)
    m = _train(mixture, out, _config("idpt", bare_bert), tiny_lm, resume=True)
    assert m["steps"] == 4 and [d["step"] for d in m["dev_metrics"]["curve"]] == [2, 4]


def test_no_training_examples(tmp_path, tiny_lm, bare_bert, mixture):
    test = mt.read_multitask(mixture, "test")
    held_out = [e for e in test if e.held_out]
    with pytest.raises(TrainingDataError, match="no training examples \\(held-out tasks are never trained on\\)"):
        train_idpt(held_out, test, tmp_path / "x", _config("idpt", bare_bert), tiny_lm, SOURCE, progress=False)
    with pytest.raises(TrainingDataError, match="no dev examples"):
        train_idpt(test, held_out, tmp_path / "x", _config("idpt", bare_bert), tiny_lm, SOURCE, progress=False)


def test_unknown_mode():
    from odqa.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match="unknown mode 'lora'"):
        IDPTTrainConfig(mode="lora")


def test_eval_idpt_reports_every_system(mixture, tmp_path, tiny_lm, bare_bert):
    from odqa.eval.multitask import evaluate_idpt

    idpt_dir, prompt_dir = tmp_path / "idpt", tmp_path / "prompt"
    _train(mixture, idpt_dir, _config("idpt", bare_bert, max_steps=1), tiny_lm)
    _train(mixture, prompt_dir, _config("prompt", bare_bert, max_steps=1), tiny_lm)
    out = tmp_path / "run"
    m = evaluate_idpt(str(mixture), {"idpt": str(idpt_dir), "prompt": str(prompt_dir), "frozen": None}, out,
                      model=tiny_lm, limit_per_task=3, timing_inputs=3, fixed_tokens=2, max_new_tokens=2)
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "report.md", "scores.png", "predictions-idpt.jsonl"}
    s = m["systems"]["idpt"]
    assert set(s["tasks"]) == {"topic", "closedbook", "subject"} and s["tasks"]["subject"]["held_out"]
    assert set(s["clusters"]) == {"classification", "qa", "naming"}
    assert s["held_out_average"] == s["tasks"]["subject"]["score"]
    assert s["trainable_params"]["total"] > m["systems"]["prompt"]["trainable_params"]["total"] == 3 * 32
    assert m["systems"]["frozen"]["trainable_params"]["total"] == 0
    assert set(m["timing"]) == {"idpt", "prompt", "frozen"} and m["timing"]["idpt"]["new_tokens"] == 2
    assert "idpt_over_prompt_percent" in m["overhead"] and "prompt" in m["gaps"]
    assert m["gaps"]["prompt"]["seen_bootstrap"]["n"] == 6  # 3 topic + 3 closedbook examples; subject held out
    report = (out / "report.md").read_text()
    assert "subject [naming (held out)]" in report and "average over trained tasks" in report
    # a rerun resumes from the prediction files instead of recomputing
    lines = len((out / "predictions-idpt.jsonl").read_text().splitlines())
    evaluate_idpt(str(mixture), {"idpt": str(idpt_dir)}, out, model=tiny_lm, limit_per_task=3, timing_inputs=2,
                  fixed_tokens=2, max_new_tokens=2)
    assert len((out / "predictions-idpt.jsonl").read_text().splitlines()) == lines


def test_eval_idpt_cli_errors(capsys):
    from odqa.cli import main

    assert main(["eval", "idpt", "--out", "/tmp/x-idpt-none"]) == 2
    assert "needs at least one system" in capsys.readouterr().err
    assert main(["eval", "idpt", "--idpt", "x"]) == 2
    assert "needs --out DIR" in capsys.readouterr().err


def test_data_multitask_cli_writes_the_mixture(tmp_path, monkeypatch, capsys):
    from odqa.cli import main

    rng = random.Random(0)
    monkeypatch.setattr(mt, "_wiki_records", lambda: [
        {"title": f"Thing{i}", "text": f"Thing{i} is a thing made in {1900 + i}.", "description": f"Thing {i}",
         "topic": TOPICS[i % 11]} for i in range(200)])
    monkeypatch.setattr(mt, "_cloze_examples", lambda split, n, seed: [
        mt._make("cloze", f"{split}{i}", {"text": "Mars is red.", "question": "What colour?"}, ["red"], rng)
        for i in range(n)])
    monkeypatch.setattr(mt, "_closedbook_examples", lambda split, n, seed: [])
    out = tmp_path / "mix"
    assert main(["data", "multitask", "--out", str(out), "--train-per-task", "5", "--dev-per-task", "2",
                 "--test-per-task", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["held_out"] == ["subject"] and manifest["counts"]["train"] == {"topic": 5, "description": 5,
                                                                                   "cloze": 5}
    assert manifest["counts"]["test"]["subject"] == 3 and "subject" not in manifest["counts"]["dev"]
    assert "held out (test only): subject" in capsys.readouterr().out
