"""FrozenLMReader on a tiny random Llama: decoding, scores, freezing, soft prompts, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from haystack import Pipeline
from haystack.dataclasses import GeneratedAnswer

from odqa.components.packing import ContextPacker
from odqa.components.readers import FrozenLMReader
from odqa.errors import ArtifactMismatchError, EmptyQuestionError, PipelineConfigError, QuestionTooLongError
from odqa.lm.backbone import load_backbone
from odqa.lm.generation import PrefixCache
from odqa.lm.prompting import encode, encode_parts, get_template
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
    assert (r.model, r.template, r.soft_prompt, r.context_length, r.max_new_tokens, r.num_beams, r.dtype,
            r.prefix_cache) == (tiny_lm, "chat", None, 256, 4, 3, "float32", True)
    assert FrozenLMReader(model=tiny_lm, prefix_cache=False).prefix_cache is False
    with pytest.raises(PipelineConfigError, match="num_beams"):
        FrozenLMReader(model=tiny_lm, num_beams=0, template="span-chat", context_length=1024)
    with pytest.raises(PipelineConfigError, match="unknown reader template 'x'"):
        FrozenLMReader(model=tiny_lm, template="x")
    with pytest.raises(PipelineConfigError, match="unknown quantize 'fp8' for the reader; use one of \\['int8', 'auto'\\] or null"):
        FrozenLMReader(model=tiny_lm, quantize="fp8")


def test_to_dict_from_dict(tiny_lm, soft_prompt_dir):
    r = FrozenLMReader(model=tiny_lm, soft_prompt=soft_prompt_dir, max_new_tokens=5, num_beams=2, template="span-chat", context_length=1024)
    data = r.to_dict()
    assert data == {
        "type": "odqa.components.readers.FrozenLMReader",
        "init_parameters": {"model": tiny_lm, "template": "span-chat", "soft_prompt": soft_prompt_dir,
                            "context_length": 1024, "max_new_tokens": 5, "num_beams": 2, "dtype": "float32",
                            "prefix_cache": True, "quantize": None, "ensemble": False,
                            "ensemble_temperature": None},
    }
    assert FrozenLMReader.from_dict(data).to_dict() == data
    q8 = FrozenLMReader(model=tiny_lm, template="qa", quantize="int8").to_dict()
    assert FrozenLMReader.from_dict(q8).quantize == "int8" and FrozenLMReader.from_dict(q8).to_dict() == q8
    off = FrozenLMReader(model=tiny_lm, template="qa", prefix_cache=False).to_dict()
    assert off["init_parameters"]["prefix_cache"] is False and off["init_parameters"]["template"] == "qa"
    again = FrozenLMReader.from_dict(off)
    assert again.prefix_cache is False and again.to_dict() == off
    # pipelines written before the option existed load with the cache on
    legacy = {"type": data["type"], "init_parameters": {k: v for k, v in data["init_parameters"].items()
                                                         if k != "prefix_cache"}}
    assert FrozenLMReader.from_dict(legacy).prefix_cache is True


def test_greedy(tiny_lm, backbone, docs):
    r = FrozenLMReader(model=tiny_lm, max_new_tokens=6, template="span-chat", context_length=1024)
    out = r.run(query=QUESTION, documents=docs)
    a = _check_answer(out, QUESTION, docs, 6)
    template = get_template("span-chat")
    passages = [(d.meta["title"], d.content) for d in docs]
    prefix_ids, body_ids = encode_parts(backbone.tokenizer, template, QUESTION, passages)
    assert a.meta["prompt_tokens"] == len(prefix_ids) + len(body_ids)
    # the split is clean here: the same ids as tokenizing the whole prompt
    assert prefix_ids + body_ids == encode(backbone.tokenizer, template,
                                           template.render(backbone.tokenizer, QUESTION, passages))
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


def _answers(reader, queries_and_docs):
    out = []
    for q, d in queries_and_docs:
        a = reader.run(query=q, documents=d)["answers"][0]
        out.append((a.data, a.meta["raw"], a.meta["new_tokens"], a.meta["prompt_tokens"], a.meta["score"]))
    return out


@pytest.fixture(scope="module")
def lively_lm(tiny_lm, tmp_path_factory) -> tuple[str, str]:
    """The tiny Llama re-initialised with std 0.3, so greedy answers run several distinct tokens
    (the 0.02 one stops or repeats at once), and a 4-vector soft prompt made for it."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("lively") / "lm"
    config = load_backbone(tiny_lm).model.config
    config = type(config).from_dict(config.to_dict() | {"initializer_range": 0.3})
    torch.manual_seed(11)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(out)
    torch.manual_seed(12)
    soft = SoftPrompt(torch.randn(4, HIDDEN)).save(out.parent / "soft_prompt", {"backbone": str(out)})
    return str(out), str(soft)


@pytest.mark.parametrize("template", ["qa-completion", "span-chat", "chat", "qa"])
@pytest.mark.parametrize("with_soft_prompt", [False, True])
def test_prefix_cache_gives_the_same_answers(lively_lm, make_docs, template, with_soft_prompt):
    lm, soft = lively_lm
    settings = dict(model=lm, template=template, context_length=1024, max_new_tokens=6,
                    soft_prompt=soft if with_soft_prompt else None)
    cached = FrozenLMReader(prefix_cache=True, **settings)
    plain = FrozenLMReader(prefix_cache=False, **settings)
    docs = make_docs(("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
                     ("p1", "Canberra", "Canberra is the capital city of Australia."))
    inputs = [(QUESTION, docs), ("What is the capital of Australia?", docs[1:]), ("Who painted the Mona Lisa?", []),
              ("Which planet is red?", make_docs(("m", "Mars", "Mars is the fourth planet from the Sun.")))]
    got, want = _answers(cached, inputs), _answers(plain, inputs)
    assert [g[:4] for g in got] == [w[:4] for w in want]  # text, raw output, token counts
    # scores: the cached loop's screened head normalises over 16 exact logits and int8 ones elsewhere
    assert [g[4] for g in got] == pytest.approx([w[4] for w in want], rel=3e-3)
    assert sum(n for _, _, n, _, _ in got) > len(inputs)  # the loop decoded past the first token



@pytest.mark.parametrize("template", ["qa-completion", "qa"])
@pytest.mark.parametrize("with_soft_prompt", [False, True])
def test_run_batch_gives_the_answers_of_run(lively_lm, make_docs, template, with_soft_prompt):
    """Four questions with contexts of four lengths, decoded together: each answer is run()'s."""
    lm, soft = lively_lm
    reader = FrozenLMReader(model=lm, template=template, context_length=1024, max_new_tokens=6,
                            soft_prompt=soft if with_soft_prompt else None)
    docs = make_docs(("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
                     ("p1", "Canberra", "Canberra is the capital city of Australia."))
    inputs = [(QUESTION, docs), ("What is the capital of Australia?", docs[1:]), ("Who painted the Mona Lisa?", []),
              ("Which planet is red?", make_docs(("m", "Mars", "Mars is the fourth planet from the Sun.")))]
    batched = reader.run_batch([q for q, _ in inputs], [d for _, d in inputs])["answers"]
    got = [(a.data, a.meta["raw"], a.meta["new_tokens"], a.meta["prompt_tokens"], a.meta["score"]) for a in batched]
    want = _answers(reader, inputs)
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert [g[4] for g in got] == pytest.approx([w[4] for w in want], abs=1e-4)
    assert [a.documents for a in batched] == [d for _, d in inputs] and len({g[1] for g in got}) > 1


@pytest.mark.parametrize("with_soft_prompt", [False, True])
def test_int8_reader_batched_cached_and_plain_agree(lively_lm, make_docs, with_soft_prompt):
    """The int8 reader quantizes each token alone, so a batch, the prefix cache and a plain run
    all give the same answers (closeness to float: tests/lm/test_quantization.py)."""
    lm, soft = lively_lm
    settings = dict(model=lm, template="qa", context_length=1024, max_new_tokens=6,
                    soft_prompt=soft if with_soft_prompt else None)
    docs = make_docs(("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
                     ("p1", "Canberra", "Canberra is the capital city of Australia."))
    inputs = [(QUESTION, docs), ("What is the capital of Australia?", docs[1:]), ("Who painted the Mona Lisa?", []),
              ("Which planet is red?", make_docs(("m", "Mars", "Mars is the fourth planet from the Sun.")))]
    cached = FrozenLMReader(quantize="int8", **settings)
    plain = _answers(FrozenLMReader(quantize="int8", prefix_cache=False, **settings), inputs)
    batched = cached.run_batch([q for q, _ in inputs], [d for _, d in inputs])["answers"]
    assert [g[:4] for g in _answers(cached, inputs)] == [p[:4] for p in plain]
    assert [(a.data, a.meta["raw"], a.meta["new_tokens"]) for a in batched] == [p[:3] for p in plain]
    assert cached._prefix_key[2] == "int8"  # its own prefix cache, apart from the float reader's


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_ensemble_reader(lively_lm, make_docs, temperature):
    """Each passage read apart, one answer from the mixture; a batch gives each question its answer
    alone, and one passage read in the ensemble is the plain reader's answer."""
    lm, soft = lively_lm
    settings = dict(model=lm, template="qa", context_length=1024, max_new_tokens=6, soft_prompt=soft)
    reader = FrozenLMReader(ensemble=True, ensemble_temperature=temperature, **settings)
    plain = FrozenLMReader(**settings)
    docs = make_docs(("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
                     ("p1", "Canberra", "Canberra is the capital city of Australia."),
                     ("m", "Mars", "Mars is the fourth planet from the Sun."))
    docs = [dataclasses.replace(d, score=score) for d, score in zip(docs, (0.9, 0.5, 0.1))]
    inputs = [(QUESTION, docs), ("What is the capital of Australia?", docs[1:2]), ("Who painted the Mona Lisa?", []),
              ("Which planet is red?", docs[::-1])]
    alone = [reader.run(query=q, documents=d)["answers"][0] for q, d in inputs]
    batched = reader.run_batch([q for q, _ in inputs], [d for _, d in inputs])["answers"]
    assert [(a.data, a.meta["raw"]) for a in batched] == [(a.data, a.meta["raw"]) for a in alone]
    assert [a.documents for a in batched] == [d for _, d in inputs]
    for q, d in inputs[1:3]:  # one passage, or none: the ensemble is the plain reader
        assert reader.run(query=q, documents=d)["answers"][0].meta["raw"] == \
            plain.run(query=q, documents=d)["answers"][0].meta["raw"]
    assert alone[0].meta["prompt_tokens"] == sum(  # an ensemble's cost: its readings' inputs, soft prompt included
        plain.run(query=QUESTION, documents=[d])["answers"][0].meta["prompt_tokens"] for d in docs)
    assert FrozenLMReader.from_dict(reader.to_dict()).to_dict() == reader.to_dict()
    if temperature is not None:
        assert reader._weights(docs) == pytest.approx(torch.softmax(torch.tensor([0.9, 0.5, 0.1]) / 0.5, 0).tolist())
    else:
        assert reader._weights(docs) == [1 / 3] * 3


def test_run_batch_groups_rows_by_length(lively_lm, make_docs, monkeypatch):
    """Big batches go through the model a few rows at a time, similar lengths together; the answers
    are still each question's own."""
    from odqa.components import readers

    assert readers._chunks([5, 1, 3, 2], [1, 1, 1, 1], 2) == [[1, 3], [2, 0]]
    assert readers._chunks([1, 2, 3], [3, 1, 1], 2) == [[0], [1, 2]]  # a question is never split
    lm, soft = lively_lm
    reader = FrozenLMReader(model=lm, template="qa", context_length=1024, max_new_tokens=6, soft_prompt=soft,
                            ensemble=True)
    docs = make_docs(("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
                     ("p1", "Canberra", "Canberra is the capital city of Australia."),
                     ("m", "Mars", "Mars is the fourth planet from the Sun."))
    inputs = [(QUESTION, docs), ("What is the capital of Australia?", docs[1:2]), ("Who painted the Mona Lisa?", []),
              ("Which planet is red?", docs[::-1]), ("Where is Canberra?", docs[:2])]
    whole = [a.meta["raw"] for a in reader.run_batch([q for q, _ in inputs], [d for _, d in inputs])["answers"]]
    calls = []
    import odqa.lm.generation as generation

    real = generation.greedy_generate_batch
    monkeypatch.setattr(generation, "greedy_generate_batch", lambda m, p, bodies, *a, **k: calls.append(len(bodies))
                        or real(m, p, bodies, *a, **k))
    monkeypatch.setattr(readers, "MAX_ROWS", 3)
    grouped = [a.meta["raw"] for a in reader.run_batch([q for q, _ in inputs], [d for _, d in inputs])["answers"]]
    assert grouped == whole and max(calls) <= 3 and len(calls) >= 4 and sum(calls) == 10


def test_ensemble_reader_bad_settings(tiny_lm, make_docs):
    with pytest.raises(PipelineConfigError, match="ensemble: true decodes greedily from the prefix cache"):
        FrozenLMReader(model=tiny_lm, ensemble=True, num_beams=2)
    with pytest.raises(PipelineConfigError, match="ensemble: true decodes greedily from the prefix cache"):
        FrozenLMReader(model=tiny_lm, ensemble=True, prefix_cache=False)
    with pytest.raises(PipelineConfigError, match="ensemble_temperature must be positive .*got 0"):
        FrozenLMReader(model=tiny_lm, ensemble=True, ensemble_temperature=0)
    reader = FrozenLMReader(model=tiny_lm, ensemble=True, ensemble_temperature=1.0, context_length=1024,
                            max_new_tokens=2)
    unscored = [dataclasses.replace(d, score=None) for d in
                make_docs(("p0", "Canberra", "Canberra is the capital city of Australia."))]
    with pytest.raises(PipelineConfigError, match="some passages have none; use ensemble_temperature: null"):
        reader.run(query="What is the capital of Australia?", documents=unscored)


def test_run_batch_bad_inputs(tiny_lm, docs):
    reader = FrozenLMReader(model=tiny_lm, context_length=1024, max_new_tokens=2)
    with pytest.raises(PipelineConfigError, match="one list of documents per question, got 2 questions and 1"):
        reader.run_batch(["a?", "b?"], [docs])
    with pytest.raises(EmptyQuestionError):
        reader.run_batch(["Who?", "  "], [docs, docs])
    beam = FrozenLMReader(model=tiny_lm, context_length=1024, max_new_tokens=2, num_beams=2)
    one = beam.run(query="Who?", documents=docs)["answers"][0].data
    assert [a.data for a in beam.run_batch(["Who?"], [docs])["answers"]] == [one]  # beams: one by one

def test_int8_is_for_the_cpu_and_a_gpu_reader_runs_its_dtype(tiny_lm, monkeypatch, caplog):
    """The default pipeline says ``quantize: int8``; on a GPU the reader loads its dtype unquantized
    (load_backbone itself refuses int8 there) and says so in the log."""
    from odqa.lm import backbone as backbone_module

    asked = []
    real = backbone_module.load_backbone

    def spy(name, dtype="float32", device=None, quantize=None):
        asked.append(quantize)
        return real(name, dtype, "cpu", quantize)  # this machine has no GPU: the CPU stands in for it

    monkeypatch.setattr(backbone_module, "load_backbone", spy)
    monkeypatch.setattr(backbone_module, "resolve_device",  # the default device is a GPU; the spy loads on the CPU
                        lambda device=None: torch.device("cuda" if device is None else device))
    with caplog.at_level("INFO", logger="odqa.components.readers"):
        FrozenLMReader(model=tiny_lm, context_length=1024, max_new_tokens=2, quantize="int8").warm_up()
    assert asked == [None] and "quantize: int8 runs as none here (cuda)" in caplog.text
    monkeypatch.setattr(backbone_module, "resolve_device", lambda device=None: torch.device("cpu"))
    FrozenLMReader(model=tiny_lm, context_length=1024, max_new_tokens=2, quantize="int8").warm_up()
    assert asked == [None, "int8"]


@pytest.mark.parametrize("vnni", [True, False])
def test_quantize_auto_is_int8_where_the_cpu_has_vnni(tiny_lm, monkeypatch, caplog, vnni):
    from odqa.lm import backbone as backbone_module
    from odqa.lm import quantization

    asked = []
    real = backbone_module.load_backbone
    monkeypatch.setattr(backbone_module, "load_backbone",
                        lambda name, dtype="float32", device=None, quantize=None: asked.append(quantize) or real(
                            name, dtype, device, quantize))
    monkeypatch.setattr(quantization, "has_vnni", lambda: vnni)
    monkeypatch.setattr(backbone_module, "resolve_device", lambda device=None: torch.device("cpu"))
    reader = FrozenLMReader(model=tiny_lm, context_length=1024, max_new_tokens=2, quantize="auto")
    with caplog.at_level("INFO", logger="odqa.components.readers"):
        reader.warm_up()
    assert asked == ["int8" if vnni else None]
    assert ("quantize: auto runs as none here (a CPU without VNNI" in caplog.text) == (not vnni)
    assert FrozenLMReader.from_dict(reader.to_dict()).quantize == "auto"
    assert quantization.resolve_quantize("auto", torch.device("cuda")) is None


def test_prefix_cache_is_built_once_per_process(tiny_lm, tmp_path, docs):
    path = SoftPrompt(torch.randn(4, HIDDEN)).save(tmp_path / "sp", {"backbone": tiny_lm})  # a key no test used
    settings = dict(model=tiny_lm, template="qa-completion", context_length=1024, max_new_tokens=3,
                    soft_prompt=str(path))
    builds = PrefixCache.builds
    first = FrozenLMReader(**settings)
    first.warm_up()
    assert PrefixCache.builds == builds + 1  # built in warm_up, before the first question
    for reader in (first, FrozenLMReader(**settings), FrozenLMReader.from_dict(first.to_dict())):
        for query in (QUESTION, "What is the capital of Australia?"):
            reader.run(query=query, documents=docs)
    assert PrefixCache.builds == builds + 1  # every reader with these settings reuses the same keys and values
    FrozenLMReader(**(settings | {"template": "span-chat"})).warm_up()  # another prefix: one more build
    assert PrefixCache.builds == builds + 2
    FrozenLMReader(**settings, prefix_cache=False).run(query=QUESTION, documents=docs)
    FrozenLMReader(**settings, num_beams=2).run(query=QUESTION, documents=docs)  # beam search does not use it
    assert PrefixCache.builds == builds + 2


def test_prefix_cache_key_follows_the_soft_prompt_content(tiny_lm, tmp_path, docs):
    path = tmp_path / "sp"
    SoftPrompt(torch.randn(3, HIDDEN)).save(path, {"backbone": tiny_lm})
    settings = dict(model=tiny_lm, template="qa", context_length=1024, max_new_tokens=4, soft_prompt=str(path))
    FrozenLMReader(**settings).run(query=QUESTION, documents=docs)
    builds = PrefixCache.builds
    SoftPrompt(torch.randn(3, HIDDEN) * 5).save(path, {"backbone": tiny_lm})  # re-trained under the same path
    retrained = FrozenLMReader(**settings)
    got = retrained.run(query=QUESTION, documents=docs)["answers"][0]
    assert PrefixCache.builds == builds + 1
    want = FrozenLMReader(**settings, prefix_cache=False).run(query=QUESTION, documents=docs)["answers"][0]
    assert (got.meta["raw"], got.meta["score"]) == (want.meta["raw"], pytest.approx(want.meta["score"], abs=1e-4))


def test_qa_template_prompt_tokens(tiny_lm, backbone, soft_prompt_dir, docs):
    r = FrozenLMReader(model=tiny_lm, template="qa", soft_prompt=soft_prompt_dir, context_length=1024, max_new_tokens=3)
    a = r.run(query=QUESTION, documents=docs)["answers"][0]
    prefix_ids, body_ids = encode_parts(backbone.tokenizer, get_template("qa"), QUESTION,
                                        [(d.meta["title"], d.content) for d in docs])
    assert prefix_ids == []  # the tiny tokenizer adds no BOS, and "qa" has no instruction or examples
    assert a.meta["prompt_tokens"] == len(body_ids) + 4
