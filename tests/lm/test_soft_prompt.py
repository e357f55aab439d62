"""odqa.lm.soft_prompt: the SoftPrompt module and its artifact format."""

from __future__ import annotations

import json

import pytest
import torch

from odqa.errors import ArtifactMismatchError, ResourceNotFoundError
from odqa.lm.soft_prompt import WEIGHTS, SoftPrompt

from conftest import HIDDEN


def test_forward_prepends_the_prompt():
    sp = SoftPrompt(torch.randn(4, HIDDEN))
    x = torch.randn(2, 7, HIDDEN)
    y = sp(x)
    assert y.shape == (2, 11, HIDDEN)
    assert torch.equal(y[:, 4:], x)
    assert torch.equal(y[0, :4], sp.prompt.detach()) and torch.equal(y[1, :4], sp.prompt.detach())
    assert sp(x.half()).dtype == torch.float16


def test_prompt_is_the_only_parameter_and_trainable():
    sp = SoftPrompt(torch.zeros(3, HIDDEN))
    params = list(sp.parameters())
    assert len(params) == 1 and params[0].requires_grad and sp.length == 3


def test_from_vocab(backbone):
    emb = backbone.model.get_input_embeddings()
    ids = torch.tensor([5, 6, 7])
    sp = SoftPrompt.from_vocab(emb, ids)
    assert torch.equal(sp.prompt.detach(), emb.weight[ids])
    assert sp.prompt.requires_grad  # a copy: training it leaves the frozen embedding alone
    assert not emb.weight.requires_grad


def test_save_writes_weights_and_manifest(tmp_path):
    out = SoftPrompt(torch.randn(4, HIDDEN)).save(tmp_path / "sp", {"backbone": "some-model", "dev": {"em": 0.1}})
    assert (out / WEIGHTS).exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"kind": "soft_prompt", "length": 4, "hidden_size": HIDDEN, "backbone": "some-model",
                        "dev": {"em": 0.1}}


def test_load_round_trip(tmp_path):
    sp = SoftPrompt(torch.randn(4, HIDDEN))
    out = sp.save(tmp_path / "sp", {"backbone": "m"})
    back = SoftPrompt.load(out, "m", HIDDEN)
    assert torch.equal(back.prompt, sp.prompt)
    assert torch.equal(SoftPrompt.load(out / WEIGHTS, "m", HIDDEN).prompt, sp.prompt)  # bare file


def test_load_errors(tmp_path):
    with pytest.raises(ResourceNotFoundError):
        SoftPrompt.load(tmp_path / "missing", "m", HIDDEN)
    out = SoftPrompt(torch.randn(4, HIDDEN)).save(tmp_path / "sp", {"backbone": "m"})
    with pytest.raises(ArtifactMismatchError, match="trained for backbone 'm'"):
        SoftPrompt.load(out, "other", HIDDEN)
    with pytest.raises(ArtifactMismatchError, match=r"\[P, 64\]"):
        SoftPrompt.load(out, "m", 64)
    (out / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(ArtifactMismatchError, match="unreadable"):
        SoftPrompt.load(out, "m", HIDDEN)
