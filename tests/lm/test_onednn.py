"""odqa.lm.onednn: float32 linear layers through oneDNN, on tiny models."""

from __future__ import annotations

import os

import pytest
import torch

from odqa.errors import PipelineConfigError
from odqa.lm import onednn
from odqa.lm.backbone import freeze, shared_copy, weights_hash
from odqa.lm.onednn import OneDNNLinear, use_onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear op")


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch):
    """These tests run the layers through oneDNN whatever this CPU is (``chosen`` has its own tests)."""
    monkeypatch.setenv("ODQA_ONEDNN", "1")


def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 40), (3, 40), (2, 7, 40)])
def test_onednn_linear_is_the_float_product(bias, shape):
    torch.manual_seed(1)
    layer = torch.nn.Linear(40, 24, bias=bias)
    x = torch.randn(*shape)
    want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    use_onednn(torch.nn.Sequential(layer))
    assert type(layer) is OneDNNLinear
    with torch.no_grad():
        got = layer(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_use_onednn_leaves_the_head_and_the_weights_alone():
    model = tiny_lm()
    before = weights_hash(model)
    tensors = {n: p.data_ptr() for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_onednn(model) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert type(model.lm_head) is torch.nn.Linear  # the screened head wants it as it is
    assert all(type(m) is OneDNNLinear for n, m in model.named_modules() if n.endswith("_proj"))
    assert weights_hash(model) == before
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == tensors  # the very same tensors
    assert state.keys() == model.state_dict().keys()
    assert use_onednn(model) == 0  # nothing plain is left
    assert all(type(m) is OneDNNLinear for n, m in shared_copy(model).named_modules() if n.endswith("_proj"))


@needs_onednn
def test_a_frozen_model_runs_through_onednn_with_the_same_logits():
    model = tiny_lm()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        want = model(ids).logits
    freeze(model)
    calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: calls.append(type(m)) if isinstance(m, torch.nn.Linear) else None)
    try:
        with torch.inference_mode():
            got = model(ids).logits
    finally:
        hook.remove()
    assert calls.count(OneDNNLinear) == 2 * 7
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_gradients_still_flow_through_a_frozen_model():
    """Training a soft prompt through the frozen LM: the layers fall back to ``F.linear``, which has a
    backward, and the gradient is the plain model's."""
    plain, frozen = tiny_lm(), freeze(tiny_lm())
    embeds = torch.randn(1, 5, 32)
    grads = []
    for model in (plain, frozen):
        x = embeds.clone().requires_grad_(True)
        model(inputs_embeds=x).logits.sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0])
    assert all(p.grad is None for p in frozen.parameters())


def test_without_the_op_nothing_changes(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    model = tiny_lm()
    assert use_onednn(model) == 0
    assert not any(type(m) is OneDNNLinear for m in model.modules())


@needs_onednn
def test_other_dtypes_fall_back():
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    use_onednn(torch.nn.Sequential(layer))
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


@needs_onednn
@pytest.mark.parametrize(("capability", "want"), [("AVX512", True), ("AVX2", False), ("DEFAULT", False)])
def test_onednn_is_chosen_on_avx512_only(monkeypatch, capability, want):
    monkeypatch.delenv("ODQA_ONEDNN")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert onednn.chosen() is want
    assert use_onednn(tiny_lm()) == (2 * 7 if want else 0)


@needs_onednn
def test_the_environment_overrides_the_choice(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("ODQA_ONEDNN", "0")
    assert not onednn.chosen() and use_onednn(tiny_lm()) == 0
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv("ODQA_ONEDNN", "1")
    assert onednn.chosen()


@pytest.mark.parametrize("has_op", [True, False])
def test_a_bad_environment_value_names_itself_and_the_fix(monkeypatch, has_op):
    monkeypatch.setattr(onednn, "available", lambda: has_op)  # refused whether or not this build has the op
    monkeypatch.setenv("ODQA_ONEDNN", "yes")
    with pytest.raises(PipelineConfigError, match=r"ODQA_ONEDNN is 'yes'; set it to 1 \(oneDNN\), 0 \(MKL\)"):
        use_onednn(tiny_lm())


@needs_onednn
def test_use_onednn_caps_the_primitive_cache_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    use_onednn(tiny_lm())
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(onednn.PRIMITIVE_CACHE)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")
    use_onednn(tiny_lm())
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "1024"


def test_mkl_leaves_the_primitive_cache_alone(monkeypatch):
    monkeypatch.setenv("ODQA_ONEDNN", "0")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert use_onednn(tiny_lm()) == 0
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
