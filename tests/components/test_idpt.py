"""ID-PT on tiny random models: the prompt generator (shapes, padding, input dependence, save/load,
mismatch errors), the encoder loader (T5 and AutoModel) and the IDPTLM component (every artifact
kind, the YAML round trip, the Python API and ``odqa run --task``)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from haystack import Pipeline
from haystack.dataclasses import GeneratedAnswer

from odqa.components.idpt import IDPTLM, KIND, PromptGenerator, load_encoder, truncate_ids
from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError
from odqa.lm.backbone import weights_hash

from conftest import HIDDEN

TEXT = "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne."
LONG = " ".join(["Romeo and Juliet is a tragedy written by William Shakespeare about two young lovers."] * 3)


def _generator(encoder_dir: str, prompt_length: int = 5, randomize: bool = True) -> PromptGenerator:
    encoder, _ = load_encoder(encoder_dir)
    torch.manual_seed(0)
    gen = PromptGenerator(encoder, HIDDEN, prompt_length=prompt_length, encoder_prompt_length=3, attn_dim=16, heads=4,
                          init_prompt=torch.randn(prompt_length, HIDDEN))
    if randomize:  # the projection starts at zero (p(x) = the plain prompt); give it weights to test the rest
        torch.nn.init.normal_(gen.out.weight, std=0.5)
    return gen.eval()


def _p(gen, encoder_dir, texts):
    _, tok = load_encoder(encoder_dir)
    enc = gen.tokenize(tok, texts)
    with torch.no_grad():
        return gen(enc["input_ids"], enc["attention_mask"]), enc


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, tiny_lm, bare_bert) -> str:
    """An ID-PT generator artifact made for ``tiny_lm`` with the ``bare_bert`` encoder."""
    gen = _generator(bare_bert)
    out = tmp_path_factory.mktemp("idpt") / "generator"
    gen.save(out, {"backbone": tiny_lm, "encoder": bare_bert, "encoder_hash": weights_hash(gen.encoder)})
    return str(out)


# --- the generator ---------------------------------------------------------------------------
def test_generator_shapes_and_parts(bare_bert):
    gen = _generator(bare_bert, prompt_length=6)
    p, _ = _p(gen, bare_bert, [TEXT, LONG])
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
    gen = _generator(bare_bert)
    alone, _ = _p(gen, bare_bert, [TEXT])
    batched, enc = _p(gen, bare_bert, [TEXT, LONG])
    assert enc["attention_mask"][0].sum() < enc["attention_mask"].shape[1]  # TEXT really was padded
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-4)


def test_prompt_depends_on_the_input_and_starts_as_the_plain_prompt(bare_bert):
    gen = _generator(bare_bert)
    p, _ = _p(gen, bare_bert, [TEXT, LONG])
    assert not torch.allclose(p[0], p[1])
    fresh = _generator(bare_bert, randomize=False)  # untrained: p(x) is the bias for every input
    q, _ = _p(fresh, bare_bert, [TEXT, LONG])
    torch.testing.assert_close(q[0], fresh.prompt_bias.detach())
    torch.testing.assert_close(q[1], fresh.prompt_bias.detach())


def test_gradients_reach_only_the_generator(bare_bert):
    gen = _generator(bare_bert).train()
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
    gen = _generator(str(out))
    alone, _ = _p(gen, str(out), [TEXT])
    batched, _ = _p(gen, str(out), [TEXT, LONG])
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
    original = _generator(bare_bert)
    a, _ = _p(original, bare_bert, [TEXT, LONG])
    b, _ = _p(loaded, bare_bert, [TEXT, LONG])
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
def test_component_answers_with_a_generator(generator_dir, tiny_lm):
    lm = IDPTLM(model=tiny_lm, artifact=generator_dir, max_new_tokens=3)
    out = lm.run(query=TEXT, task="topic")
    a = out["answers"][0]
    assert isinstance(a, GeneratedAnswer) and isinstance(a.data, str)
    assert a.meta["system"] == KIND and a.meta["task"] == "topic" and a.meta["template"] == "classify"
    assert 1 <= a.meta["new_tokens"] <= 3 and a.meta["prompt_ms"] >= 0
    assert a.meta["input_tokens"] > 5  # p(x) plus the rendered input
    assert lm.prompt_length == 5
    # a template by name, and a fully rendered input when there is no task
    assert lm.run(query=TEXT, task="topic/which")["answers"][0].meta["template"] == "which"
    assert lm.run(query="Question: Who wrote Hamlet?\nAnswer:")["answers"][0].meta["template"] == ""


def test_component_runs_every_system(tiny_lm, soft_prompt_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from odqa.artifacts import write_manifest

    frozen = IDPTLM(model=tiny_lm, max_new_tokens=2)
    assert frozen.run(query=TEXT, task="closedbook")["answers"][0].meta["system"] == "frozen"
    assert frozen.prompt_length == 0
    soft = IDPTLM(model=tiny_lm, artifact=soft_prompt_dir, max_new_tokens=2)
    assert soft.run(query=TEXT, task="closedbook")["answers"][0].meta["system"] == "soft_prompt"
    assert soft.prompt_length == 4
    tuned_dir = tmp_path / "tuned"
    AutoModelForCausalLM.from_pretrained(tiny_lm).save_pretrained(tuned_dir)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(tuned_dir)
    write_manifest(tuned_dir, {"kind": "finetuned_lm", "backbone": tiny_lm})
    tuned = IDPTLM(model=tiny_lm, artifact=str(tuned_dir), max_new_tokens=2)
    assert tuned.run(query=TEXT, task="closedbook")["answers"][0].meta["system"] == "finetuned_lm"
    with pytest.raises(ArtifactMismatchError, match="was made from .* set model to"):
        IDPTLM(model="smollm2-135m-instruct", artifact=str(tuned_dir)).warm_up()


def test_component_errors(tiny_lm, tiny_lm_plain, tmp_path, generator_dir):
    from odqa.errors import EmptyQuestionError
    from odqa.artifacts import write_manifest

    with pytest.raises(PipelineConfigError, match="unknown task 'poetry'"):
        IDPTLM(model=tiny_lm, task="poetry")
    with pytest.raises(PipelineConfigError, match="max_new_tokens must be"):
        IDPTLM(model=tiny_lm, max_new_tokens=0)
    lm = IDPTLM(model=tiny_lm, artifact=generator_dir, max_new_tokens=2)
    with pytest.raises(PipelineConfigError, match="has no template 'sonnet'"):
        lm.run(query=TEXT, task="topic/sonnet")
    with pytest.raises(EmptyQuestionError):
        lm.run(query="  ", task="topic")
    with pytest.raises(ResourceNotFoundError, match="does not exist"):
        IDPTLM(model=tiny_lm, artifact=str(tmp_path / "missing")).warm_up()
    other = tmp_path / "other"
    other.mkdir()
    write_manifest(other, {"kind": "reranker"})
    with pytest.raises(ArtifactMismatchError, match="is a 'reranker'; IDPTLM takes"):
        IDPTLM(model=tiny_lm, artifact=str(other)).warm_up()
    with pytest.raises(ArtifactMismatchError, match="trained for backbone"):
        IDPTLM(model=tiny_lm_plain, artifact=generator_dir).warm_up()  # another backbone


def test_to_dict_from_dict_and_yaml_round_trip(tiny_lm, generator_dir):
    lm = IDPTLM(model=tiny_lm, artifact=generator_dir, task="topic", max_new_tokens=3, max_input_tokens=64)
    data = lm.to_dict()
    assert data["init_parameters"] == {"model": tiny_lm, "artifact": generator_dir, "task": "topic",
                                       "max_new_tokens": 3, "max_input_tokens": 64, "dtype": "float32"}
    again = IDPTLM.from_dict(data)
    assert again.to_dict() == data
    pipe = Pipeline()
    pipe.add_component("lm", lm)
    loaded = Pipeline.loads(pipe.dumps(), allowed_modules=["odqa.*"])
    assert loaded.get_component("lm").to_dict() == data
    assert loaded.run({"query": TEXT, "task": "closedbook"})["lm"]["answers"][0].meta["task"] == "closedbook"


def _idpt_yaml(directory, tiny_lm, generator_dir):
    import os

    directory.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(generator_dir, directory)
    data = {"components": {"idpt": {"type": "odqa.components.idpt.IDPTLM", "init_parameters": {
        "model": tiny_lm, "artifact": rel, "task": None, "max_new_tokens": 2, "max_input_tokens": 128,
        "dtype": "float32"}}}, "connections": []}
    path = directory / "idpt.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_python_api_takes_a_task(tmp_path, tiny_lm, generator_dir, pipeline_yaml):
    import odqa

    qa = odqa.load(str(_idpt_yaml(tmp_path / "pipes", tiny_lm, generator_dir)))  # artifact path relative to the YAML
    a = qa.ask(TEXT, task="description")
    assert isinstance(a.answer, str) and a.meta["task"] == "description" and a.passages == []
    assert "idpt" in a.timings and "total" in a.timings
    with pytest.raises(PipelineConfigError, match="unknown task"):
        qa.ask(TEXT, task="poetry")
    with pytest.raises(PipelineConfigError, match="takes no task"):
        odqa.load(str(pipeline_yaml)).ask("Who wrote Romeo and Juliet?", task="topic")


def test_cli_run_with_a_task(tmp_path, tiny_lm, generator_dir, capsys):
    from odqa.cli import main

    path = _idpt_yaml(tmp_path / "pipes", tiny_lm, generator_dir)
    assert main(["run", "--pipeline", str(path), "--question", TEXT, "--task", "topic", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meta"]["task"] == "topic" and out["question"] == TEXT
    assert main(["run", str(path), "--pipeline", str(path), "--question", TEXT]) == 2
    assert "name the pipeline once" in capsys.readouterr().err
    assert main(["run", "--pipeline", str(path), "--question", TEXT, "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
