"""Prompt tuning of the frozen reader, on the tiny random Llama and the 30-passage index."""

from __future__ import annotations

import json

import pytest
import torch

from odqa.errors import BackboneChangedError, OdqaError, TrainingDataError
from odqa.lm.backbone import weights_hash
from odqa.training.frozen import FrozenCheck
from odqa.training.reader import ReaderTrainConfig, batch_loss, train_reader

TRAIN = [
    {"id": f"t{i}", "question": q, "answers": [a]}
    for i, (q, a) in enumerate([
        ("Who wrote Romeo and Juliet?", "William Shakespeare"),
        ("What is the capital of Australia?", "Canberra"),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
        ("Who discovered penicillin?", "Alexander Fleming"),
        ("In which country is Mount Kilimanjaro?", "Tanzania"),
        ("Who wrote Moby-Dick?", "Herman Melville"),
    ])
]
DEV = [{"id": "d0", "question": "Which planet is the Red Planet?", "answers": ["Mars"]},
       {"id": "d1", "question": "Where is the Eiffel Tower?", "answers": ["Paris"]}]
SOURCE = {"train": "hand-written test questions", "synthetic": False}


def _config(**kw) -> ReaderTrainConfig:
    base = dict(prompt_length=4, template="chat", batch_size=2, epochs=2, lr=0.05, eval_every=2, save_every=1,
                patience=10, warmup_steps=1)
    return ReaderTrainConfig(**{**base, **kw})


def test_train_reader_writes_artifact_and_keeps_backbone(pipeline_yaml, tmp_path, backbone):
    before = weights_hash(backbone.model)
    out = tmp_path / "prompt"
    manifest = train_reader(str(pipeline_yaml), TRAIN, DEV, out, _config(), SOURCE, progress=False)
    assert weights_hash(backbone.model) == before == manifest["backbone_hash"]
    assert {p.name for p in out.iterdir()} == {"soft_prompt.safetensors", "manifest.json", "curves.png"}
    assert manifest["kind"] == "soft_prompt" and manifest["length"] == 4 and manifest["hidden_size"] == 32
    assert manifest["steps"] == 6  # 6 questions / batch 2 * 2 epochs
    assert manifest["data"]["examples"] == 6 and manifest["synthetic"] is False
    assert [d["step"] for d in manifest["dev_metrics"]["curve"]] == [2, 4, 6]
    assert manifest["dev_metrics"]["best"]["questions"] == 2
    # the artifact loads into the pipeline's reader
    from odqa.lm.soft_prompt import SoftPrompt

    assert SoftPrompt.load(out, manifest["backbone"], 32).length == 4


def test_training_moves_the_prompt_and_lowers_the_loss(backbone):
    from odqa.training.reader import init_prompt

    torch.manual_seed(0)
    soft = init_prompt(backbone, 4)
    start = soft.prompt.detach().clone()
    opt = torch.optim.AdamW(soft.parameters(), lr=0.1)
    batch = [([5, 6, 7, 8, 9, 10], 4), ([11, 12, 13, 14, 15], 3)]
    losses = []
    for _ in range(15):
        loss = batch_loss(backbone.model, soft, batch, backbone.tokenizer.pad_token_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert not torch.equal(start, soft.prompt.detach())
    assert all(p.grad is None for p in backbone.model.parameters())  # nothing flowed into the backbone


def test_resume_continues_from_the_checkpoint(pipeline_yaml, tmp_path):
    out = tmp_path / "prompt"
    first = train_reader(str(pipeline_yaml), TRAIN, DEV, out, _config(max_steps=2), SOURCE, progress=False)
    assert first["steps"] == 2
    with pytest.raises(OdqaError, match="pass --resume"):
        train_reader(str(pipeline_yaml), TRAIN, DEV, out, _config(max_steps=4), SOURCE, progress=False)
    second = train_reader(str(pipeline_yaml), TRAIN, DEV, out, _config(max_steps=4), SOURCE, resume=True,
                          progress=False)
    assert second["steps"] == 4
    # the dev curve continues (steps 2 then 4), nothing recomputed from zero
    assert [d["step"] for d in second["dev_metrics"]["curve"]] == [2, 4]
    contexts = (tmp_path / "prompt.work" / "contexts-train.jsonl").read_text().splitlines()
    assert len(contexts) == len(TRAIN)  # packed once, reused on resume


def test_no_training_questions_is_an_error(pipeline_yaml, tmp_path):
    with pytest.raises(TrainingDataError, match="no training questions"):
        train_reader(str(pipeline_yaml), [], DEV, tmp_path / "p", _config(), SOURCE, progress=False)


def test_an_ensemble_reader_is_refused(pipeline_yaml, tmp_path):
    import yaml

    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["packer"]["init_parameters"].update(ensemble=True, max_passages=2)
    data["components"]["reader"]["init_parameters"]["ensemble"] = True
    path = pipeline_yaml.parent / "ensemble.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OdqaError, match="reads each passage apart .* train on the same pipeline with ensemble: false"):
        train_reader(str(path), TRAIN, DEV, tmp_path / "p", _config(), SOURCE, progress=False)


def test_frozen_check_catches_a_changed_backbone(backbone):
    with pytest.raises(BackboneChangedError, match="weights changed"):
        with FrozenCheck(backbone.model, "tiny"):
            w = backbone.model.get_input_embeddings().weight
            w.data[0, 0] += 1.0
    backbone.model.get_input_embeddings().weight.data[0, 0] -= 1.0  # restore for the other tests


def test_frozen_check_refuses_trainable_weights(backbone):
    p = next(backbone.model.parameters())
    p.requires_grad_(True)
    try:
        with pytest.raises(BackboneChangedError, match="trainable parameters"):
            with FrozenCheck(backbone.model, "tiny"):
                pass
    finally:
        p.requires_grad_(False)


def test_manifest_records_the_command_and_data(pipeline_yaml, tmp_path):
    out = tmp_path / "prompt"
    train_reader(str(pipeline_yaml), TRAIN[:2], DEV[:1], out, _config(epochs=1, eval_every=1), 
                 {"train": "synthetic-cloze.train.jsonl", "synthetic": True}, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"] is True and manifest["data"]["train"] == "synthetic-cloze.train.jsonl"
    assert manifest["command"] and manifest["template"] == "chat"
    assert manifest["config"]["prompt_length"] == 4
