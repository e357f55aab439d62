"""ID-PT's prompt generator (odqa.lm.prompt_generator) on tiny random models: shapes, padding,
input dependence, gradients, the encoder loader (T5 and AutoModel), save/load and its mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch

from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError
from odqa.lm.prompt_generator import KIND, PromptGenerator, load_encoder, truncate_ids

from conftest import HIDDEN, generator_prompt, make_generator

TEXT = "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne."
LONG = " ".join(["Romeo and Juliet is a tragedy written by William Shakespeare about two young lovers."] * 3)


# --- the generator ---------------------------------------------------------------------------
def test_generator_shapes_and_parts(bare_bert):
    gen = make_generator(bare_bert, prompt_length=6)
    p, _ = generator_prompt(gen, bare_bert, [TEXT, LONG])
    assert p.shape == (2, 6, HIDDEN)
    counts = gen.parameter_counts()
    assert counts["encoder_prompt"] == 3 * HIDDEN
    assert counts["projection"] == 16 * HIDDEN + 6 * HIDDEN  # weight + per-position bias
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total") == sum(
        x.numel() for x in gen.parameters())
    # the frozen encoder is neither a parameter of the generator nor in its saved state
    assert not any(k.startswith("encoder.") for k in gen.state_dict())
    assert all(not x.requires_grad for x in gen.encoder.parameters())


def test_padding_does_not_change_the_prompt(bare_bert):
    gen = make_generator(bare_bert)
    alone, _ = generator_prompt(gen, bare_bert, [TEXT])
    batched, enc = generator_prompt(gen, bare_bert, [TEXT, LONG])
    assert enc["attention_mask"][0].sum() < enc["attention_mask"].shape[1]  # TEXT really was padded
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-4)


def test_prompt_depends_on_the_input_and_starts_as_the_plain_prompt(bare_bert):
    gen = make_generator(bare_bert)
    p, _ = generator_prompt(gen, bare_bert, [TEXT, LONG])
    assert not torch.allclose(p[0], p[1])
    fresh = make_generator(bare_bert, randomize=False)  # untrained: p(x) is the bias for every input
    q, _ = generator_prompt(fresh, bare_bert, [TEXT, LONG])
    torch.testing.assert_close(q[0], fresh.prompt_bias.detach())
    torch.testing.assert_close(q[1], fresh.prompt_bias.detach())


def test_gradients_reach_only_the_generator(bare_bert):
    gen = make_generator(bare_bert).train()
    _, tok = load_encoder(bare_bert)
    enc = gen.tokenize(tok, [TEXT, LONG])
    gen(enc["input_ids"], enc["attention_mask"]).pow(2).sum().backward()
    assert all(x.grad is not None for x in gen.parameters())
    assert all(x.grad is None for x in gen.encoder.parameters())
    gen.zero_grad()


def test_generator_validates_its_settings(bare_bert):
    encoder, _ = load_encoder(bare_bert)
    with pytest.raises(PipelineConfigError, match="not divisible by heads"):
        PromptGenerator(encoder, HIDDEN, attn_dim=10, heads=4)
    with pytest.raises(PipelineConfigError, match="init_prompt has shape"):
        PromptGenerator(encoder, HIDDEN, prompt_length=4, init_prompt=torch.zeros(3, HIDDEN))


def test_t5_ids_load_t5_encoder_model(models_dir, bare_bert):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel, T5Model

    out = models_dir / "tiny-t5"
    tok = AutoTokenizer.from_pretrained(bare_bert)
    cfg = T5Config(vocab_size=len(tok), d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   decoder_start_token_id=0)
    torch.manual_seed(0)
    T5Model(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    encoder, _ = load_encoder(str(out))
    assert isinstance(encoder, T5EncoderModel)
    gen = make_generator(str(out))
    alone, _ = generator_prompt(gen, str(out), [TEXT])
    batched, _ = generator_prompt(gen, str(out), [TEXT, LONG])
    assert batched.shape == (2, 5, HIDDEN)
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-4)


def test_any_other_encoder_loads_through_automodel(bare_bert):
    from transformers import BertModel

    encoder, tok = load_encoder(bare_bert)
    assert isinstance(encoder, BertModel) and not encoder.training
    assert load_encoder(bare_bert)[0] is encoder  # cached per process


def test_a_decoder_is_refused_as_encoder(tiny_lm):
    with pytest.raises(PipelineConfigError, match="is a decoder"):
        load_encoder(tiny_lm)


def test_save_load_round_trip(generator_dir, tiny_lm, bare_bert):
    files = {p.name for p in __import__("pathlib").Path(generator_dir).iterdir()}
    assert files == {"prompt_generator.safetensors", "manifest.json"}
    manifest = json.loads((__import__("pathlib").Path(generator_dir) / "manifest.json").read_text())
    assert manifest["kind"] == KIND and manifest["hidden_size"] == HIDDEN and manifest["prompt_length"] == 5
    assert manifest["trainable_params"]["total"] > 0
    loaded = PromptGenerator.load(generator_dir, tiny_lm, HIDDEN).eval()
    original = make_generator(bare_bert)
    a, _ = generator_prompt(original, bare_bert, [TEXT, LONG])
    b, _ = generator_prompt(loaded, bare_bert, [TEXT, LONG])
    torch.testing.assert_close(a, b)


def test_load_refuses_an_artifact_for_another_backbone(generator_dir):
    with pytest.raises(ArtifactMismatchError, match="was trained for backbone .* but this pipeline uses 'other-lm'"):
        PromptGenerator.load(generator_dir, "other-lm", HIDDEN)


def test_load_refuses_another_hidden_size(generator_dir, tiny_lm):
    with pytest.raises(ArtifactMismatchError, match="hidden size 32, but backbone .* has 64"):
        PromptGenerator.load(generator_dir, tiny_lm, 64)


def test_load_refuses_an_encoder_with_other_weights(generator_dir, tiny_lm, tmp_path):
    import shutil

    bad = tmp_path / "gen"
    shutil.copytree(generator_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["encoder_hash"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactMismatchError, match="other weights than the ones"):
        PromptGenerator.load(bad, tiny_lm, HIDDEN)


def test_load_of_a_missing_artifact(tmp_path, tiny_lm):
    with pytest.raises(ResourceNotFoundError, match="prompt generator .* not found"):
        PromptGenerator.load(tmp_path / "nothing", tiny_lm, HIDDEN)


def test_truncate_keeps_head_and_tail():
    ids = list(range(100))
    assert truncate_ids(ids, 200) == ids
    cut = truncate_ids(ids, 40, head=10)
    assert len(cut) == 40 and cut[:10] == ids[:10] and cut[10:] == ids[-30:]


# --- the component -----------------------------------------------------------------------------
