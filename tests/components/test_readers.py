"""FrozenLMReader on a tiny random Llama: decoding, scores, freezing, soft prompts, errors."""

from __future__ import annotations

import pytest
import torch
from haystack import Pipeline
from haystack.dataclasses import GeneratedAnswer

from odqa.components.packing import ContextPacker
from odqa.components.readers import FrozenLMReader
from odqa.errors import ArtifactMismatchError, EmptyQuestionError, PipelineConfigError, QuestionTooLongError
from odqa.lm.backbone import load_backbone
from odqa.lm.prompting import encode, get_template
from odqa.lm.soft_prompt import SoftPrompt

from conftest import HIDDEN


QUESTION = "Who wrote Romeo and Juliet?"


@pytest.fixture
def docs(make_docs):
    return make_docs(
        ("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
        ("p1", "Canberra", "Canberra is the capital city of Australia."),
    )


def _check_answer(out, query, docs, max_new_tokens):
    assert set(out) == {"answers"} and len(out["answers"]) == 1
    a = out["answers"][0]
    assert isinstance(a, GeneratedAnswer)
    assert isinstance(a.data, str) and "\n" not in a.data
    assert a.query == query
    assert a.documents == docs
    score = a.meta["score"]
    assert isinstance(score, float) and 0.0 <= score <= 1.0
    assert 1 <= a.meta["new_tokens"] <= max_new_tokens
    assert isinstance(a.meta["raw"], str)
    return a


def _assert_frozen(model):
    assert model.training is False
    assert all(not p.requires_grad for p in model.parameters())


def test_init_stores_params_and_validates(tiny_lm):
    r = FrozenLMReader(model=tiny_lm, template="chat", context_length=256, max_new_tokens=4, num_beams=3)
    assert (r.model, r.template, r.soft_prompt, r.context_length, r.max_new_tokens, r.num_beams, r.dtype) == (
        tiny_lm, "chat", None, 256, 4, 3, "float32")
    with pytest.raises(PipelineConfigError, match="num_beams"):
        FrozenLMReader(model=tiny_lm, num_beams=0, template="span-chat", context_length=1024)
    with pytest.raises(PipelineConfigError, match="unknown reader template 'x'"):
        FrozenLMReader(model=tiny_lm, template="x")


def test_to_dict_from_dict(tiny_lm, soft_prompt_dir):
    r = FrozenLMReader(model=tiny_lm, soft_prompt=soft_prompt_dir, max_new_tokens=5, num_beams=2, template="span-chat", context_length=1024)
    data = r.to_dict()
    assert data == {
        "type": "odqa.components.readers.FrozenLMReader",
        "init_parameters": {"model": tiny_lm, "template": "span-chat", "soft_prompt": soft_prompt_dir,
                            "context_length": 1024, "max_new_tokens": 5, "num_beams": 2, "dtype": "float32"},
    }
    assert FrozenLMReader.from_dict(data).to_dict() == data


def test_greedy(tiny_lm, backbone, docs):
    r = FrozenLMReader(model=tiny_lm, max_new_tokens=6, template="span-chat", context_length=1024)
    out = r.run(query=QUESTION, documents=docs)
    a = _check_answer(out, QUESTION, docs, 6)
    template = get_template("span-chat")
    passages = [(d.meta["title"], d.content) for d in docs]
    expected = len(encode(backbone.tokenizer, template, template.render(backbone.tokenizer, QUESTION, passages)))
    assert a.meta["prompt_tokens"] == expected
    again = r.run(query=QUESTION, documents=docs)["answers"][0]
    assert (again.data, again.meta["score"]) == (a.data, pytest.approx(a.meta["score"]))  # greedy is deterministic
    assert r._backbone is backbone  # the backbone is shared per process
    _assert_frozen(backbone.model)


def test_beam_search(tiny_lm, backbone, docs):
    out = FrozenLMReader(model=tiny_lm, max_new_tokens=5, num_beams=2, template="span-chat", context_length=1024).run(query=QUESTION, documents=docs)
    _check_answer(out, QUESTION, docs, 5)
    _assert_frozen(backbone.model)


@pytest.mark.parametrize("documents", [None, []])
def test_closed_book(tiny_lm, documents):
    out = FrozenLMReader(model=tiny_lm, max_new_tokens=3, template="span-chat", context_length=1024).run(query=QUESTION, documents=documents)
    _check_answer(out, QUESTION, [], 3)


@pytest.mark.parametrize("template", ["span-chat", "qa-completion"])
def test_tokenizer_without_chat_template(tiny_lm_plain, docs, template):
    bb = load_backbone(tiny_lm_plain)
    assert not getattr(bb.tokenizer, "chat_template", None)
    rendered = get_template(template).render(bb.tokenizer, QUESTION, [("T", "x")])
    assert rendered.endswith("assistant:" if template == "span-chat" else "Answer:")
    out = FrozenLMReader(model=tiny_lm_plain, template=template, context_length=1024, max_new_tokens=3).run(query=QUESTION, documents=docs)
    _check_answer(out, QUESTION, docs, 3)


def test_soft_prompt(tiny_lm, soft_prompt_dir, docs):
    settings = dict(max_new_tokens=4, template="span-chat", context_length=1024)
    r = FrozenLMReader(model=tiny_lm, soft_prompt=soft_prompt_dir, **settings)
    plain = FrozenLMReader(model=tiny_lm, **settings).run(query=QUESTION, documents=docs)["answers"][0]
    a = _check_answer(r.run(query=QUESTION, documents=docs), QUESTION, docs, 4)
    assert r._soft.length == 4
    assert not r._soft.prompt.requires_grad
    assert a.meta["prompt_tokens"] == plain.meta["prompt_tokens"] + 4
    _assert_frozen(r._backbone.model)
    beam = FrozenLMReader(model=tiny_lm, soft_prompt=soft_prompt_dir, max_new_tokens=4, num_beams=2, template="span-chat", context_length=1024)
    _check_answer(beam.run(query=QUESTION, documents=docs), QUESTION, docs, 4)


def test_soft_prompt_with_wrong_hidden_size(tiny_lm, tmp_path):
    path = SoftPrompt(torch.randn(4, HIDDEN * 2)).save(tmp_path / "sp", {"backbone": tiny_lm})
    with pytest.raises(ArtifactMismatchError) as e:
        FrozenLMReader(model=tiny_lm, soft_prompt=str(path)).warm_up()
    assert f"[P, {HIDDEN}]" in str(e.value)
    # a bare .safetensors file is checked too
    with pytest.raises(ArtifactMismatchError):
        FrozenLMReader(model=tiny_lm, soft_prompt=str(path / "soft_prompt.safetensors")).warm_up()


def test_soft_prompt_for_another_backbone(tiny_lm, tiny_lm_plain, tmp_path):
    path = SoftPrompt(torch.randn(4, HIDDEN)).save(tmp_path / "sp", {"backbone": tiny_lm_plain})
    with pytest.raises(ArtifactMismatchError) as e:
        FrozenLMReader(model=tiny_lm, soft_prompt=str(path)).warm_up()
    assert tiny_lm_plain in str(e.value) and tiny_lm in str(e.value)


def test_prompt_over_the_limit_without_packer(tiny_lm, backbone, make_docs):
    template = get_template("span-chat")
    base = len(encode(backbone.tokenizer, template, template.render(backbone.tokenizer, QUESTION, [])))
    docs = make_docs(("x", "Long", " ".join(["The Pacific Ocean is the largest ocean."] * 10)))
    r = FrozenLMReader(model=tiny_lm, context_length=base + 16 + 5, template="span-chat")
    with pytest.raises(PipelineConfigError, match="ContextPacker"):
        r.run(query=QUESTION, documents=docs)


def test_question_too_long(tiny_lm):
    with pytest.raises(QuestionTooLongError):
        FrozenLMReader(model=tiny_lm, context_length=1024, template="span-chat").run(query="Why " * 2000 + "?")


@pytest.mark.parametrize("query", ["", " \n "])
def test_empty_question(tiny_lm, query):
    with pytest.raises(EmptyQuestionError):
        FrozenLMReader(model=tiny_lm, template="span-chat", context_length=1024).run(query=query, documents=[])


def test_packer_and_reader_pipeline_round_trip(tiny_lm, docs):
    p = Pipeline()
    settings = dict(model=tiny_lm, context_length=600, max_new_tokens=4)
    p.add_component("packer", ContextPacker(**settings))
    p.add_component("reader", FrozenLMReader(**settings))
    p.connect("packer.documents", "reader.documents")
    text = p.dumps()
    again = Pipeline.loads(text, allowed_modules=["odqa.*"])
    assert again.dumps() == text
    out = again.run({"query": QUESTION, "documents": docs}, include_outputs_from={"packer"})
    a = out["reader"]["answers"][0]
    assert isinstance(a, GeneratedAnswer)
    assert [d.id for d in a.documents] == [d.id for d in out["packer"]["documents"]]
    assert a.meta["prompt_tokens"] + 4 <= 600  # prompt + max_new_tokens fit the context
