"""odqa.lm.quantization: int8 linear layers (per-channel weights, per-token activations) on tiny models."""

from __future__ import annotations

import pytest
import torch

from odqa.errors import PipelineConfigError
from odqa.lm import backbone as backbone_module
from odqa.lm.backbone import load_backbone
from odqa.lm.backbone import shared_copy
from odqa.lm import quantization
from odqa.lm.quantization import (KEEP_FLOAT, Int8Linear, Int8Weight, RowExact, SharedInput, madvise,
                                  quantize_int8, row_exact)

KERNELS = ["int_mm"] + (["fbgemm"] if "fbgemm" in torch.backends.quantized.supported_engines else [])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int8_weight_multiplies_exactly_by_either_kernel(kernel, rows):
    torch.manual_seed(rows)
    weight = torch.randint(-127, 128, (300, 96), dtype=torch.int8)
    weight[0], weight[1] = 127, -127  # the extremes, where a 16-bit pair sum would saturate
    x = torch.randint(-127, 128, (rows, 96), dtype=torch.int8)
    x[0] = 127
    if rows > 1:
        x[1] = -127
    want = (x.long() @ weight.long().t()).double()
    got = Int8Weight(weight, kernel=kernel)(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 300)
    assert torch.equal(got.double(), want)
    assert torch.equal(Int8Weight(weight, kernel=kernel).weight_q, weight)  # fbgemm's copy unpacks to it


def test_int8_weight_bad_input():
    with pytest.raises(ValueError, match=r"takes a 2-d int8 tensor, got torch.float32 of shape \(4, 4\)"):
        Int8Weight(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="unknown int8 kernel 'avx'; use 'int_mm' or 'fbgemm'"):
        Int8Weight(torch.zeros(4, 4, dtype=torch.int8), kernel="avx")


def test_madvise_keeps_the_contents(tmp_path):
    t = torch.arange(300_000, dtype=torch.int32)
    mapped_file = tmp_path / "t.bin"
    t.numpy().tofile(mapped_file)
    mapped = torch.from_file(str(mapped_file), shared=False, size=t.numel(), dtype=torch.int32)
    for tensor in (t, mapped):  # anonymous memory, and a file's pages
        for advice in ("MADV_PAGEOUT", "MADV_RANDOM", "MADV_NO_SUCH_ADVICE"):
            madvise(tensor, advice)
        assert torch.equal(tensor, torch.arange(300_000, dtype=torch.int32))


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    x = torch.randn(2, 5, 48)
    x[0, 1] *= 30  # one loud token: its own scale, so the others keep their resolution
    q = Int8Linear(lin)
    want, got = lin(x), q(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    rel = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert rel.max() < 0.02
    assert q.weight_q.dtype == torch.int8 and q.weight_q.shape == (24, 48)


def test_int8_linear_without_bias_and_in_bfloat16():
    torch.manual_seed(1)
    lin = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    got = Int8Linear(lin)(x)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), lin(x.float()), atol=0.05, rtol=0.05)


def test_quantize_int8_keeps_the_head_and_first_layer_float(tiny_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    ids = torch.tensor([[3, 7, 11, 5, 9, 2]])
    with torch.no_grad():
        want = model(ids).logits
    n = quantize_int8(model)
    assert KEEP_FLOAT == ("lm_head", "*layers.0.*")
    assert n == 7 * (model.config.num_hidden_layers - 1)  # q, k, v, o, gate, up, down of every later layer
    quantized = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert all(name.startswith("model.layers.") and not name.startswith("model.layers.0.") for name in quantized)
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        got = model(ids).logits
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.999
    kept = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(kept) == 8 and all(isinstance(m, RowExact) for m in kept)  # layer 0's seven and the head


@pytest.mark.parametrize("onednn", [False, True])
def test_row_exact_multiplies_each_sequence_as_alone(onednn):
    """A batch of sequences through a RowExact layer: each row bit for bit its product alone, the
    weights and state dict the layer's own."""
    from odqa.lm import onednn as onednn_module

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    if onednn:
        if not onednn_module.available():
            pytest.skip("this torch build has no oneDNN linear")
        linear.__class__ = onednn_module.OneDNNLinear
    base = type(linear)
    weight, state = linear.weight, dict(linear.state_dict())
    row_exact(linear)
    row_exact(linear)  # twice: still one mixin
    assert type(linear).__mro__[1:3] == (RowExact, base) and linear.weight is weight
    assert linear.state_dict().keys() == state.keys()
    x = torch.randn(8, 1, 64)
    with torch.inference_mode():
        together = linear(x)
        for i in range(8):
            assert torch.equal(together[i:i + 1], linear(x[i:i + 1].clone()))
        assert torch.allclose(together, torch.nn.functional.linear(x, linear.weight, linear.bias), atol=1e-5)


def test_load_backbone_quantized_is_cached_apart(tiny_lm):
    plain = load_backbone(tiny_lm)
    q8 = load_backbone(tiny_lm, quantize="int8")
    assert q8 is load_backbone(tiny_lm, quantize="int8") and q8 is not plain
    assert not any(isinstance(m, Int8Linear) for m in plain.model.modules())
    assert any(isinstance(m, Int8Linear) for m in q8.model.modules())
    assert all(not p.requires_grad for p in q8.model.parameters())
    # built from the float backbone: what stays float is the same tensors, not a second copy
    assert q8.model.get_input_embeddings().weight is plain.model.get_input_embeddings().weight
    assert q8.model.model.layers[0].mlp.up_proj.weight is plain.model.model.layers[0].mlp.up_proj.weight
    assert q8.tokenizer is plain.tokenizer


def test_quantized_copy_answers_as_quantizing_in_place(tiny_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    in_place = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    quantize_int8(in_place)
    twin = shared_copy(model)
    quantize_int8(twin)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, in_place(ids).logits)
    assert not any(isinstance(m, Int8Linear) for m in model.modules())  # the original is left float


def test_bad_quantize_is_refused(tiny_lm, monkeypatch):
    with pytest.raises(PipelineConfigError, match="unknown quantize 'int4'; use one of \\['int8'\\] or null"):
        load_backbone(tiny_lm, quantize="int4")
    monkeypatch.setattr(backbone_module, "resolve_device", lambda device=None: torch.device("cuda"))
    with pytest.raises(PipelineConfigError, match="quantize: int8 is for the CPU, but the backbone would run on "
                                                  "cuda; set quantize: null"):
        load_backbone(tiny_lm, quantize="int8")


def test_keep_float_patterns_match_full_names(tiny_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    n = quantize_int8(model, keep_float=("model.layers.0.*", "*o_proj", "lm_head"))
    quantized = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert n == len(quantized) == 6  # layer 1's q, k, v, gate, up and down; layer 0, o_proj, head float
    assert all(name.startswith("model.layers.1.") and not name.endswith("o_proj") for name in quantized)
    assert quantize_int8(AutoModelForCausalLM.from_pretrained(tiny_lm), keep_float=()) == 7 * 2 + 1


def test_layers_of_one_input_share_its_rounding_and_product_and_compute_the_same(tiny_lm, monkeypatch):
    """q/k/v and gate/up stacked: the same logits, bit for bit, as each layer multiplying alone."""
    from transformers import AutoModelForCausalLM

    shared = shared_copy(AutoModelForCausalLM.from_pretrained(tiny_lm).eval())
    quantize_int8(shared)
    monkeypatch.setattr(quantization, "SHARED_INPUTS", ())
    alone = shared_copy(AutoModelForCausalLM.from_pretrained(tiny_lm).eval())
    quantize_int8(alone)
    layer = shared.model.layers[1]
    assert layer.self_attn.q_proj.shared[0] is layer.self_attn.v_proj.shared[0]
    assert layer.mlp.gate_proj.shared[0] is layer.mlp.up_proj.shared[0] and layer.mlp.down_proj.shared is None
    assert alone.model.layers[1].self_attn.q_proj.shared is None
    assert torch.equal(layer.self_attn.k_proj.weight_q, alone.model.layers[1].self_attn.k_proj.weight_q)
    assert "input shared" in repr(layer.self_attn.k_proj)
    ids = torch.tensor([[3, 7, 11, 5, 9, 2], [4, 4, 8, 1, 0, 6]])
    with torch.inference_mode():
        assert torch.equal(shared(ids).logits, alone(ids).logits)
        x = torch.randn(2, 3, layer.self_attn.q_proj.in_features)
        k = layer.self_attn.k_proj(x)  # called out of order, or with another input: multiplied anew
        assert torch.equal(k, alone.model.layers[1].self_attn.k_proj(x))
        assert torch.equal(layer.self_attn.k_proj(x), k)
    assert layer.self_attn.q_proj.shared[0]._last.value is not None  # q and v not yet taken
    with pytest.raises(ValueError, match="one input size"):
        SharedInput([layer.self_attn.o_proj, layer.mlp.down_proj])
