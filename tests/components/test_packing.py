"""ContextPacker: the token arithmetic of packing passages into the reader's context window."""

from __future__ import annotations

import pytest
from haystack import Document, Pipeline

from odqa.components.packing import ContextPacker
from odqa.lm.prompting import ReaderPrompt
from odqa.lm.soft_prompt import soft_prompt_length
from odqa.errors import EmptyQuestionError, PipelineConfigError, QuestionTooLongError
from odqa.lm.prompting import encode_parts, get_template


QUESTION = "Who wrote Romeo and Juliet?"
SHORT_A = ("a", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare.")
LONG_B = ("b", "Pacific Ocean", " ".join(["The Pacific Ocean is the largest and deepest ocean."] * 12))
SHORT_C = ("c", "Canberra", "Canberra is the capital city of Australia.")
LONG_D = ("d", "Sahara", " ".join(["The Sahara is the largest hot desert in the world."] * 12))


def _prompt_tokens(tokenizer, template_name, question, docs) -> int:
    """The reader's input length: prefix ids + body ids."""
    passages = [(d.meta.get("title", ""), d.content) for d in docs]
    prefix_ids, body_ids = encode_parts(tokenizer, get_template(template_name), question, passages)
    return len(prefix_ids) + len(body_ids)


def budget_soft(out) -> int:
    return out["budget"]["soft_prompt_tokens"]


@pytest.fixture
def docs(make_docs):
    return make_docs(SHORT_A, LONG_B, SHORT_C, LONG_D)


def test_init_and_unknown_template(tiny_lm):
    packer = ContextPacker(model=tiny_lm)
    assert (packer.model, packer.template, packer.context_length, packer.max_new_tokens, packer.soft_prompt) == (
        tiny_lm, "qa-completion", 384, 16, None)
    with pytest.raises(PipelineConfigError) as e:
        ContextPacker(model=tiny_lm, template="nope")
    assert "nope" in str(e.value) and "span-chat" in str(e.value)


def test_to_dict_from_dict(tiny_lm, soft_prompt_dir):
    packer = ContextPacker(model=tiny_lm, template="chat", context_length=512, max_new_tokens=8,
                           soft_prompt=soft_prompt_dir)
    data = packer.to_dict()
    assert data == {
        "type": "odqa.components.packing.ContextPacker",
        "init_parameters": {"model": tiny_lm, "template": "chat", "context_length": 512, "max_new_tokens": 8,
                            "soft_prompt": soft_prompt_dir, "max_passages": None, "order": "best-first",
                            "index_dir": None, "ensemble": False},
    }
    assert ContextPacker.from_dict(data).to_dict() == data


@pytest.mark.parametrize("template", ["span-chat", "chat", "qa-completion", "qa"])
def test_skips_a_long_passage_and_fits_a_later_short_one(backbone, tiny_lm, docs, template):
    tok = backbone.tokenizer
    max_new = 8
    fits = _prompt_tokens(tok, template, QUESTION, [docs[0], docs[2]])  # A + C
    assert _prompt_tokens(tok, template, QUESTION, [docs[0], docs[1]]) > fits + 40  # B is much longer than C
    context_length = fits + max_new + 3  # room for A and C (with slack), not for B or D
    packer = ContextPacker(model=tiny_lm, template=template, context_length=context_length, max_new_tokens=max_new)
    out = packer.run(query=QUESTION, documents=docs)

    assert [d.id for d in out["documents"]] == ["a", "c"]  # rank order kept
    assert out["dropped_ids"] == ["b", "d"]  # exactly the rest
    rendered = _prompt_tokens(tok, template, QUESTION, out["documents"])
    assert rendered + max_new + budget_soft(out) <= context_length
    budget = out["budget"]
    base = _prompt_tokens(tok, template, QUESTION, [])
    assert budget == {
        "context_length": context_length,
        "max_new_tokens": max_new,
        "soft_prompt_tokens": 0,
        "passage_budget": context_length - base - max_new,
        "prompt_tokens": rendered,
    }


def test_everything_fits(backbone, tiny_lm, docs):
    out = ContextPacker(model=tiny_lm, template="span-chat", context_length=4096).run(query=QUESTION, documents=docs)
    assert [d.id for d in out["documents"]] == ["a", "b", "c", "d"]
    assert out["dropped_ids"] == []
    assert out["budget"]["prompt_tokens"] == _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, docs)


def test_max_passages_and_best_last_order(backbone, tiny_lm, docs):
    packer = ContextPacker(model=tiny_lm, template="span-chat", context_length=4096, max_passages=3, order="best-last")
    out = packer.run(query=QUESTION, documents=docs)
    assert [d.id for d in out["documents"]] == ["c", "b", "a"]  # the best three, the best nearest the question
    assert out["dropped_ids"] == ["d"]
    assert out["budget"]["prompt_tokens"] == _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION,
                                                            [docs[2], docs[1], docs[0]])
    assert ContextPacker.from_dict(packer.to_dict()).to_dict() == packer.to_dict()


@pytest.mark.parametrize("kwargs, message", [
    ({"order": "random"}, "unknown passage order 'random'; use one of ['best-first', 'best-last']"),
    ({"max_passages": 0}, "max_passages must be at least 1 (or null for as many as fit), got 0"),
    ({"ensemble": True}, "an ensemble packer needs max_passages: each kept passage is one more reading of the "
                         "question"),
])
def test_bad_order_or_max_passages(tiny_lm, kwargs, message):
    with pytest.raises(PipelineConfigError) as e:
        ContextPacker(model=tiny_lm, **kwargs)
    assert str(e.value) == message


def test_ensemble_budgets_each_passage_alone(backbone, tiny_lm, docs):
    """Read apart, passages need not fit together: the first max_passages that fit alone are kept."""
    alone = [_prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, [d]) for d in docs]
    long_b = alone[1]
    assert long_b > max(alone[0], alone[2])
    # a window that holds the long passage alone but not beside another one
    context = long_b + 16 + 1
    assert _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, docs[:2]) > context - 16
    packer = ContextPacker(model=tiny_lm, template="span-chat", context_length=context, max_new_tokens=16,
                           max_passages=3, ensemble=True)
    out = packer.run(query=QUESTION, documents=docs)
    assert [d.id for d in out["documents"]] == ["a", "b", "c"] and out["dropped_ids"] == ["d"]
    assert out["budget"]["prompt_tokens"] == long_b  # the longest reading
    together = ContextPacker(model=tiny_lm, template="span-chat", context_length=context, max_new_tokens=16,
                             max_passages=3).run(query=QUESTION, documents=docs)
    assert "b" not in [d.id for d in together["documents"]]
    # a passage too long even alone is skipped, and a later one taken instead
    small = ContextPacker(model=tiny_lm, template="span-chat", context_length=max(alone[0], alone[2]) + 16,
                          max_new_tokens=16, max_passages=2, ensemble=True)
    out = small.run(query=QUESTION, documents=docs)
    assert [d.id for d in out["documents"]] == ["a", "c"] and out["dropped_ids"] == ["b", "d"]
    assert ContextPacker.from_dict(small.to_dict()).ensemble is True


def test_nothing_fits(backbone, tiny_lm, docs):
    base = _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, [])
    out = ContextPacker(model=tiny_lm, template="span-chat", context_length=base + 16 + 2).run(query=QUESTION, documents=docs)
    assert out["documents"] == []
    assert out["dropped_ids"] == ["a", "b", "c", "d"]
    assert out["budget"]["prompt_tokens"] == base
    assert out["budget"]["passage_budget"] == 2


def test_empty_documents(backbone, tiny_lm):
    out = ContextPacker(model=tiny_lm, template="span-chat", context_length=1024).run(query=QUESTION, documents=[])
    assert out["documents"] == [] and out["dropped_ids"] == []
    assert out["budget"]["prompt_tokens"] == _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, [])


def test_soft_prompt_takes_context(tiny_lm, soft_prompt_dir, docs):
    assert soft_prompt_length(soft_prompt_dir) == 4
    assert soft_prompt_length(None) == 0
    plain = ContextPacker(model=tiny_lm, template="span-chat", context_length=1024).run(query=QUESTION, documents=docs)["budget"]
    with_soft = ContextPacker(model=tiny_lm, template="span-chat", context_length=1024, soft_prompt=soft_prompt_dir).run(query=QUESTION, documents=docs)["budget"]
    assert with_soft["soft_prompt_tokens"] == 4
    assert with_soft["passage_budget"] == plain["passage_budget"] - 4


def test_soft_prompt_tips_a_passage_out(backbone, tiny_lm, soft_prompt_dir, make_docs):
    docs = make_docs(SHORT_A, SHORT_C)
    exact = _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, docs) + 16  # A and C fit exactly
    assert [d.id for d in ContextPacker(model=tiny_lm, template="span-chat", context_length=exact).run(
        query=QUESTION, documents=docs)["documents"]] == ["a", "c"]
    out = ContextPacker(model=tiny_lm, template="span-chat", context_length=exact, soft_prompt=soft_prompt_dir).run(
        query=QUESTION, documents=docs)
    assert [d.id for d in out["documents"]] == ["a"]
    assert out["dropped_ids"] == ["c"]
    assert out["budget"]["prompt_tokens"] + 16 + 4 <= exact


def test_question_too_long(backbone, tiny_lm):
    question = "Who wrote " + " ".join(["Romeo and Juliet"] * 400) + "?"
    with pytest.raises(QuestionTooLongError) as e:
        ContextPacker(model=tiny_lm, template="span-chat", context_length=1024).run(query=question, documents=[])
    msg = str(e.value)
    assert "context_length=1024" in msg and "shorten the question" in msg
    with pytest.raises(QuestionTooLongError):
        ReaderPrompt("span-chat", 1024, 16, 0).budget(backbone.tokenizer, question)


def test_question_exactly_at_the_limit(backbone):
    base = _prompt_tokens(backbone.tokenizer, "span-chat", QUESTION, [])
    assert ReaderPrompt("span-chat", base + 16 + 4, 16, 4).budget(backbone.tokenizer, QUESTION) == 0
    with pytest.raises(QuestionTooLongError):
        ReaderPrompt("span-chat", base + 16 + 3, 16, 4).budget(backbone.tokenizer, QUESTION)


@pytest.mark.parametrize("query", ["", "  "])
def test_empty_question(tiny_lm, query):
    with pytest.raises(EmptyQuestionError):
        ContextPacker(model=tiny_lm, template="span-chat", context_length=1024).run(query=query, documents=[])


def test_in_pipeline_round_trip(tiny_lm, docs):
    p = Pipeline()
    p.add_component("packer", ContextPacker(model=tiny_lm, template="span-chat", context_length=2048, max_new_tokens=4))
    text = p.dumps()
    again = Pipeline.loads(text, allowed_modules=["odqa.*"])
    assert again.dumps() == text
    out = again.run({"packer": {"query": QUESTION, "documents": docs}})
    assert [d.id for d in out["packer"]["documents"]] == ["a", "b", "c", "d"]


def test_tokenizer_without_chat_template(tiny_lm_plain, docs):
    from odqa.lm.backbone import load_backbone

    tok = load_backbone(tiny_lm_plain).tokenizer
    fits = _prompt_tokens(tok, "span-chat", QUESTION, [docs[0], docs[2]])
    out = ContextPacker(model=tiny_lm_plain, template="span-chat", context_length=fits + 16 + 3).run(query=QUESTION, documents=docs)
    assert [d.id for d in out["documents"]] == ["a", "c"] and out["dropped_ids"] == ["b", "d"]
    assert out["budget"]["prompt_tokens"] == _prompt_tokens(tok, "span-chat", QUESTION, out["documents"])


@pytest.mark.parametrize("bad", ["missing", "garbage"])
def test_bad_soft_prompt_path(tiny_lm, tmp_path, bad):
    from odqa.errors import ArtifactMismatchError, ResourceNotFoundError

    path = tmp_path / "sp"
    if bad == "garbage":
        path.mkdir()
        (path / "soft_prompt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises((ResourceNotFoundError, ArtifactMismatchError)):
        ContextPacker(model=tiny_lm, soft_prompt=str(path)).run(query=QUESTION, documents=[])


@pytest.mark.parametrize("template", ["qa", "qa-completion", "span-chat"])
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_packer_counts_what_the_reader_reads(backbone, tiny_lm, soft_prompt_dir, docs, template, prefix_cache):
    """The packer's prompt_tokens (+ soft prompt) is the reader's prompt_tokens, and a packed prompt is
    never too long for the reader, at window sizes from "nothing fits" to "everything fits"."""
    from odqa.components.readers import FrozenLMReader

    max_new, soft = 4, 4
    smallest = _prompt_tokens(backbone.tokenizer, template, QUESTION, []) + max_new + soft
    largest = _prompt_tokens(backbone.tokenizer, template, QUESTION, docs) + max_new + soft
    lengths = set()
    for context_length in range(smallest - 1, largest + 2, max(1, (largest - smallest) // 12)):
        settings = dict(model=tiny_lm, template=template, context_length=context_length, max_new_tokens=max_new,
                        soft_prompt=soft_prompt_dir)
        try:
            packed = ContextPacker(**settings).run(query=QUESTION, documents=docs)
        except QuestionTooLongError:
            continue
        a = FrozenLMReader(**settings, prefix_cache=prefix_cache).run(query=QUESTION, documents=packed["documents"])
        meta = a["answers"][0].meta
        assert meta["prompt_tokens"] == packed["budget"]["prompt_tokens"] + packed["budget"]["soft_prompt_tokens"]
        assert meta["prompt_tokens"] + max_new <= context_length
        lengths.add(len(packed["documents"]))
    assert len(lengths) >= 3  # the windows above packed several different numbers of passages


def test_each_passage_is_tokenised_once(tiny_lm, docs, monkeypatch):
    """Passage token counts are cached by text: a second question over the same passages tokenises
    none of them again, a new passage alone is tokenised, and the packing is the same."""
    packer = ContextPacker(model=tiny_lm, context_length=1024)
    packer.warm_up()
    first = packer.run(query="Who wrote Hamlet?", documents=docs)
    real, seen = packer._tokenizer, []

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, texts, *args, **kwargs):
            if isinstance(texts, list):  # the batched passage call (prompts are tokenised one by one)
                seen.append(len(texts))
            return real(texts, *args, **kwargs)

    monkeypatch.setattr(packer, "_tokenizer", Counting())
    again = packer.run(query="Who wrote Hamlet?", documents=docs)
    assert seen == [] and again == first
    new = Document(id="new", content="A passage never packed before.", meta={"title": "New"})
    packer.run(query="Which passage is new?", documents=[*docs, new])
    assert seen == [1]


def test_index_passages_are_counted_at_warm_up(tiny_lm, flat_index, monkeypatch):
    """With ``index_dir`` every passage of the index is counted once, at warm-up: packing its
    passages then tokenises none of them, and packs as a packer without it does."""
    from odqa.index import open_index

    passages = open_index(flat_index).passages
    packer = ContextPacker(model=tiny_lm, context_length=1024, index_dir=flat_index)
    packer.warm_up()
    assert len(packer._costs) >= len(passages)  # the process's counts for this tokenizer (other tests add theirs)
    other = ContextPacker(model=tiny_lm, context_length=512, index_dir=flat_index)
    other.warm_up()
    assert other._costs is packer._costs  # a second packer of the same tokenizer counts nothing again
    real, seen = packer._tokenizer, []

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, texts, *args, **kwargs):
            if isinstance(texts, list):
                seen.append(len(texts))
            return real(texts, *args, **kwargs)

    monkeypatch.setattr(packer, "_tokenizer", Counting())
    docs = [Document(id=p.id, content=p.text, meta={"title": p.title}) for p in passages[:6]]
    lazy = ContextPacker(model=tiny_lm, context_length=1024)
    assert packer.run(query="Who wrote Hamlet?", documents=docs) == lazy.run(query="Who wrote Hamlet?", documents=docs)
    assert seen == []
    assert ContextPacker.from_dict(packer.to_dict()).index_dir == flat_index


def test_warm_up_loads_the_tokenizer_not_the_weights(models_dir, docs):
    """The packer counts tokens only: a reader loads the weights (once, in its own precision)."""
    from conftest import _save_tiny_lm
    from odqa.lm import backbone as bb

    path = _save_tiny_lm(models_dir / "tiny-lm-packer-only", None, seed=3)
    packer = ContextPacker(model=path, template="qa", context_length=1024, max_new_tokens=4)
    packer.run(query="Who wrote Romeo and Juliet?", documents=docs)
    assert not any(key[0] == path for key in bb._CACHE)
    assert bb.load_backbone(path).tokenizer is bb.load_tokenizer(path)  # one tokenizer per name
