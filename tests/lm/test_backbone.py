"""odqa.lm.backbone: one frozen backbone per (model, dtype), shared by every component."""

from __future__ import annotations

import shutil

import torch

from odqa.lm.backbone import freeze, load_backbone

from conftest import HIDDEN


def _assert_frozen(model):
    assert model.training is False
    assert all(not p.requires_grad for p in model.parameters())


def test_load_is_frozen_and_cached(tiny_lm, backbone):
    assert load_backbone(tiny_lm) is backbone
    assert backbone.name == tiny_lm
    assert backbone.hidden_size == HIDDEN
    _assert_frozen(backbone.model)


def test_dtype_is_part_of_the_cache_key(tiny_lm, backbone):
    half = load_backbone(tiny_lm, dtype="bfloat16")
    assert half is not backbone
    assert half.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert backbone.model.get_input_embeddings().weight.dtype == torch.float32
    _assert_frozen(half.model)


def test_stop_tokens(backbone):
    tok = backbone.tokenizer
    stops = backbone.stop_token_ids
    assert tok.eos_token_id in stops
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops  # chat end-of-turn
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1 and newline[0] in stops  # a span answer ends at a newline
    assert tok.unk_token_id not in stops
    assert stops == sorted(set(stops))


def test_missing_pad_token_falls_back_to_eos(tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    path = tmp_path / "no-pad"
    shutil.copytree(tiny_lm, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token_id is None
    bb = load_backbone(str(path))
    assert bb.tokenizer.pad_token_id == bb.tokenizer.eos_token_id


def test_freeze():
    layer = torch.nn.Linear(2, 2).train()
    assert freeze(layer) is layer
    _assert_frozen(layer)
