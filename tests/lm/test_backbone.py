"""odqa.lm.backbone: one frozen backbone per (model, dtype), shared by every component."""

from __future__ import annotations

import shutil

import pytest
import torch

from odqa.errors import PipelineConfigError
from odqa.lm.backbone import freeze, load_backbone, resolve_device

from conftest import HIDDEN, user_odqa_home


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


def test_device_comes_from_odqa_device(monkeypatch, tiny_lm, backbone):
    monkeypatch.setenv("ODQA_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")  # an explicit argument wins, any case
    assert load_backbone(tiny_lm) is backbone  # the default device is part of the same cache key
    assert backbone.device == torch.device("cpu")
    monkeypatch.setenv("ODQA_DEVICE", "auto")
    assert resolve_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.delenv("ODQA_DEVICE")
    assert resolve_device() == resolve_device("auto")


def test_bad_device_names_the_value_and_the_fix(monkeypatch):
    monkeypatch.setenv("ODQA_DEVICE", "tpu")
    with pytest.raises(PipelineConfigError, match=r"unknown device 'tpu'; set ODQA_DEVICE to auto, cpu, cuda"):
        resolve_device()
    with pytest.raises(PipelineConfigError, match="unknown device 'gpu!'"):
        resolve_device("gpu!")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_says_to_use_the_cpu(monkeypatch):
    monkeypatch.setenv("ODQA_DEVICE", "cuda")
    with pytest.raises(PipelineConfigError, match=r"device 'cuda' was asked for, but torch sees no CUDA GPU.*ODQA_DEVICE=cpu"):
        resolve_device()


@pytest.mark.slow
def test_the_fast_tokenizer_encodes_as_the_models_own_class():
    """The backbone's tokenizer is its tokenizer.json wrapped as it is (PreTrainedTokenizerFast), not
    the model's class (for Gemma, GemmaTokenizer, which keeps 160 MB of Python copies beside it): the
    same ids, special tokens and decoding over a third of the bundled corpus and every question.
    (SmolLM2's own class is that wrapper already.)"""
    from transformers import AutoTokenizer

    from odqa.data.corpus import read_corpus
    from odqa.data.questions import load_questions
    from odqa.lm.backbone import load_tokenizer
    from odqa.resources import model_dir

    name = "gemma3-270m"
    with user_odqa_home():  # the dequantized backbones are cached there
        ours, theirs = load_tokenizer(name), AutoTokenizer.from_pretrained(model_dir(name))
        texts = [f"{p.title}\n{p.text}" for p in read_corpus("wiki-vital")[::3]]
        texts += [q.question for q in load_questions("trivia-wiki") + load_questions("fanoutqa-wiki")]
    for special in (True, False):
        want = theirs(texts, add_special_tokens=special)["input_ids"]
        assert ours(texts, add_special_tokens=special)["input_ids"] == want
    assert [ours.decode(ids, skip_special_tokens=True) for ids in want[:500]] == \
        [theirs.decode(ids, skip_special_tokens=True) for ids in want[:500]]
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids) and len(ours) == len(theirs)
    assert ours.chat_template == theirs.chat_template
