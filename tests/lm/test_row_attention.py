"""odqa.lm.row_attention: a decoding step's attention, each row over its own keys, as it is alone."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F

from odqa.lm.row_attention import NAME, _row_starts, row_attention, use_row_attention

MODULE = types.SimpleNamespace(is_causal=True, layer_idx=0, config=None, num_key_value_groups=2)  # what sdpa's path reads


def _sdpa(q, k, v, mask=None, scaling=None):
    """torch's attention with key heads shared by groups of query heads, ``[batch, q, heads, dim]``."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling).transpose(1, 2)


@pytest.fixture
def rows():
    """Four rows of 5, 9, 2 and 7 keys, 4 query heads over 2 key heads, laid out pads first."""
    torch.manual_seed(0)
    lengths = [5, 9, 2, 7]
    width = max(lengths)
    alone = [(torch.randn(1, 4, 1, 16), torch.randn(1, 2, n, 16), torch.randn(1, 2, n, 16)) for n in lengths]
    q = torch.cat([a[0] for a in alone])
    k = torch.cat([torch.cat([torch.zeros(1, 2, width - n, 16), a[1]], dim=2) for a, n in zip(alone, lengths)])
    v = torch.cat([torch.cat([torch.zeros(1, 2, width - n, 16), a[2]], dim=2) for a, n in zip(alone, lengths)])
    mask = torch.stack([torch.arange(width) >= width - n for n in lengths])[:, None, None, :]
    return alone, (q, k, v, mask), lengths


@torch.inference_mode()
def test_each_row_of_a_batch_is_its_attention_alone_bit_for_bit(rows):
    alone, (q, k, v, mask), lengths = rows
    together, _ = row_attention(MODULE, q, k, v, mask, scaling=0.3)
    assert together.shape == (4, 1, 4, 16)
    for i, (qa, ka, va) in enumerate(alone):
        single, _ = row_attention(MODULE, qa, ka, va, None, scaling=0.3)
        assert torch.equal(together[i:i + 1], single)
        assert torch.allclose(single, _sdpa(qa, ka, va, scaling=0.3), atol=1e-6)  # and it is attention
    assert _row_starts(mask, 4, max(lengths)) == [max(lengths) - n for n in lengths]


@torch.inference_mode()
def test_softcap_caps_the_scores(rows):
    alone, _, _ = rows
    q, k, v = alone[1]
    capped, _ = row_attention(MODULE, q * 50, k, v, None, scaling=1.0, softcap=2.0)
    scores = torch.tanh((q * 50).reshape(2, 2, 16) @ k[0].transpose(-1, -2) / 2.0) * 2.0
    want = (torch.softmax(scores, dim=-1) @ v[0]).reshape(1, 1, 4, 16)
    assert torch.allclose(capped, want, atol=1e-6)


@torch.inference_mode()
def test_prefills_and_masks_that_are_not_suffixes_go_to_sdpa(rows):
    _, (q, k, v, mask), lengths = rows
    width = max(lengths)
    holes = mask.clone()
    holes[0, 0, 0, width - 1] = False  # a row that skips its last key: not a suffix
    assert _row_starts(holes, 4, width) is None
    got, _ = row_attention(MODULE, q, k, v, holes, scaling=0.3)
    assert torch.allclose(got, _sdpa(q, k, v, holes, 0.3), atol=1e-6)
    empty = torch.zeros_like(mask)  # a row that attends to nothing
    assert _row_starts(empty, 4, width) is None
    several = torch.randn(1, 4, 3, 16)  # three queries: a prefill
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    got, _ = row_attention(MODULE, several, k[:1, :, -3:], v[:1, :, -3:], causal, scaling=0.3)
    assert torch.allclose(got, _sdpa(several, k[:1, :, -3:], v[:1, :, -3:], causal, 0.3), atol=1e-6)


def test_training_goes_to_sdpa_with_its_gradient(rows):
    alone, _, _ = rows
    q, k, v = (t.clone().requires_grad_(True) for t in alone[0])
    out, _ = row_attention(MODULE, q, k, v, None, scaling=0.3)
    out.sum().backward()
    assert q.grad is not None and k.grad is not None


def test_use_row_attention_switches_an_sdpa_model_only(backbone):
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(backbone.model.config)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    assert use_row_attention(model) and model.config._attn_implementation == NAME
    assert use_row_attention(model)  # again: nothing to do
    config.__dict__["_attn_implementation_internal"] = "eager"
    eager = LlamaForCausalLM(config)
    eager.config._attn_implementation_internal = "eager"
    assert not use_row_attention(eager) and eager.config._attn_implementation == "eager"
