"""odqa.lm.screened_head: int8-screened output head whose argmax is the float head's."""

from __future__ import annotations

import torch

from odqa.lm.quantization import Int8Linear
from odqa.lm.screened_head import ScreenedHead, build_tables, screened_head


def _head(vocab=5000, dim=64, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(dim, vocab, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, dim, generator=g) * 0.05)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g) * 0.1)
    return head, torch.randn(32, dim, generator=g) * 3


def test_argmax_and_candidates_are_the_float_heads():
    for bias in (False, True):
        head, hidden = _head(bias=bias)
        screened = ScreenedHead(head, candidates=16)
        want = head(hidden)
        got = screened(hidden)
        assert torch.equal(got.argmax(dim=1), want.argmax(dim=1))
        top = want.topk(4, dim=1).indices  # the best few are candidates, so exact
        assert torch.allclose(got.gather(1, top), want.gather(1, top), atol=1e-5)
        approx, bound = screened.screen(hidden)
        assert ((approx - want).abs() <= bound).all()  # the bound the proof rests on holds
        assert ((got - want).abs() <= bound).all() and (got - want).abs().max() > 1e-4  # the rest: int8 logits
        assert screened.widened == 0


def test_a_tie_it_cannot_prove_widens_to_the_tokens_that_could_win():
    head, hidden = _head(vocab=300)
    with torch.no_grad():  # tokens 7 and 8 share a row, so no bound separates them; both win for row 0
        head.weight[8] = head.weight[7]
        hidden[0] = head.weight[7] * 50
    screened = ScreenedHead(head, candidates=1)
    got = screened(hidden)
    want = head(hidden)
    assert screened.widened >= 1
    assert torch.allclose(got[0, [7, 8]], want[0, [7, 8]], atol=1e-5)  # both contenders computed exactly
    assert (got[0] != want[0]).sum() > 100  # and not the whole row: the rest of the table is not read
    assert torch.equal(got.argmax(dim=1), want.argmax(dim=1))


def test_soft_capped_logits():
    head, hidden = _head()
    got = ScreenedHead(head, softcap=3.0)(hidden)
    want = torch.tanh(head(hidden) / 3.0) * 3.0
    assert got.abs().max() <= 3.0
    assert torch.equal(got.argmax(dim=1), want.argmax(dim=1))


def test_one_per_head_table_and_none_where_it_does_not_apply(tiny_lm):
    from transformers import AutoModelForCausalLM

    from odqa.lm.backbone import shared_copy
    from odqa.lm.quantization import quantize_int8

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    twin = shared_copy(model)
    quantize_int8(twin)  # keeps lm_head float, sharing its table
    assert screened_head(model) is screened_head(twin) is not None
    twin.lm_head = Int8Linear(model.lm_head)
    assert screened_head(twin) is None
    assert screened_head(torch.nn.Module()) is None


def test_tables_are_cached_beside_odqa_home_and_rebuilt_when_unreadable(tiny_lm, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from odqa.lm import screened_head as module

    monkeypatch.setenv("ODQA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(module, "_HEADS", {})
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    built = screened_head(model)
    [cached] = (tmp_path / "home" / "screened-heads").glob("*.safetensors")
    monkeypatch.setattr(module, "_HEADS", {})
    again = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    reread = screened_head(again)
    assert reread is not built and all(torch.equal(a, b) for a, b in zip(reread.tables().values(),
                                                                            built.tables().values()))
    hidden = torch.randn(3, model.config.hidden_size)
    assert torch.equal(reread(hidden).argmax(1), again.lm_head(hidden).argmax(1))
    cached.write_bytes(b"cut short")  # an unreadable cache is built again, and rewritten
    monkeypatch.setattr(module, "_HEADS", {})
    assert torch.equal(screened_head(again).weight_q, built.weight_q)
    assert module._read(cached) is not None
    monkeypatch.setattr(module, "_HEADS", {})
    assert module._cache_file(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)) is None  # not loaded from files
    other = type(model)(model.config)  # the same directory's config, other weights: another cache file
    assert other.name_or_path == model.name_or_path
    assert module._cache_file(other, other.lm_head) != module._cache_file(model, model.lm_head)
    assert torch.equal(screened_head(other).weight_q, ScreenedHead(other.lm_head).weight_q)


def test_reading_at_random_is_advice_only(tmp_path):
    """The table is marked for random reads (``MADV_RANDOM``) and its file's unmapped cached pages are
    dropped, which changes how pages come in, never what they hold: over an anonymous tensor and over
    a memory-mapped safetensors file alike (and a file that is gone is passed over)."""
    from safetensors.torch import load_file, save_file

    from odqa.lm.screened_head import _read_at_random

    table = torch.randn(4096, 64)
    save_file({"w": table}, str(tmp_path / "t.safetensors"))
    mapped = load_file(str(tmp_path / "t.safetensors"))["w"]
    for weight in (table.clone(), mapped):
        _read_at_random(weight, [tmp_path / "t.safetensors", tmp_path / "gone.safetensors"])
        assert torch.equal(weight, table)
        assert torch.equal(weight[[7, 4000]], table[[7, 4000]])


def test_tables_built_in_blocks_are_the_whole_tables():
    head, _ = _head(vocab=5000)
    whole = build_tables(head.weight.detach(), rows=5000)
    blocks = build_tables(head.weight.detach(), rows=768)  # 6 blocks and a short one
    assert whole.keys() == blocks.keys() == ScreenedHead(head).tables().keys()
    assert torch.equal(whole["weight_q"], blocks["weight_q"]) and torch.equal(whole["scale"], blocks["scale"])
    for name in ("error_l2", "rounded_l2"):  # row norms: at most float32 rounding apart
        torch.testing.assert_close(whole[name], blocks[name], rtol=1e-6, atol=0)
    assert torch.equal(head.weight.detach(), _head(vocab=5000)[0].weight.detach())  # paging out is advice only
