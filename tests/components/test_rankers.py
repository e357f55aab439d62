"""CrossEncoderRanker with a tiny random BertForSequenceClassification cross-encoder."""

from __future__ import annotations

import pytest
from haystack import Document, Pipeline

from odqa.components.rankers import CrossEncoderRanker, QueryEncoderRanker
from odqa.errors import EmptyQuestionError, PipelineConfigError, ResourceNotFoundError

QUESTION = "Who wrote Romeo and Juliet?"


@pytest.fixture
def docs(make_docs):
    return make_docs(
        ("p0", "Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
        ("p1", "Canberra", "Canberra is the capital city of Australia."),
        ("p2", "Mars", "Mars is the fourth planet from the Sun."),
        ("p3", "Tokyo", "Tokyo is the capital of Japan."),
    )


def test_init_stores_params(cross_encoder):
    r = CrossEncoderRanker(model=cross_encoder)
    assert (r.model, r.top_k, r.batch_size, r.max_length) == (cross_encoder, None, 32, 512)


def test_to_dict_from_dict(cross_encoder):
    r = CrossEncoderRanker(model=cross_encoder, top_k=3, batch_size=2, max_length=128)
    data = r.to_dict()
    assert data == {
        "type": "odqa.components.rankers.CrossEncoderRanker",
        "init_parameters": {"model": cross_encoder, "top_k": 3, "batch_size": 2, "max_length": 128,
                            "candidates": None, "fusion": "none"},
    }
    assert CrossEncoderRanker.from_dict(data).to_dict() == data


def test_scores_only_its_candidates(cross_encoder, docs, monkeypatch):
    ranker = CrossEncoderRanker(model=cross_encoder, candidates=3)
    ranker.warm_up()
    seen = []
    score = ranker._score
    monkeypatch.setattr(ranker, "_score", lambda pairs: seen.append(len(pairs)) or score(pairs))
    ranked = ranker.run(query=QUESTION, documents=docs)["documents"]
    assert seen == [3]
    assert {d.id for d in ranked[:3]} == {d.id for d in docs[:3]}  # the first three, re-ordered
    assert [d.id for d in ranked[3:]] == [d.id for d in docs[3:]]  # the rest in retrieval order
    assert CrossEncoderRanker.from_dict(ranker.to_dict()).candidates == 3


def test_candidates_and_fusion_are_checked(cross_encoder):
    with pytest.raises(PipelineConfigError, match="candidates must be at least 1.*got 0"):
        CrossEncoderRanker(model=cross_encoder, candidates=0)
    with pytest.raises(PipelineConfigError, match=r"unknown fusion 'mean'; use one of \['none', 'rrf'\]"):
        CrossEncoderRanker(model=cross_encoder, fusion="mean")
    # the query-encoder ranker takes the same two settings, checked the same way, before loading anything
    with pytest.raises(PipelineConfigError, match="candidates must be at least 1.*got -1"):
        QueryEncoderRanker(model="missing", index_dir="missing", candidates=-1)
    with pytest.raises(PipelineConfigError, match=r"unknown fusion 'max'"):
        QueryEncoderRanker(model="missing", index_dir="missing", fusion="max")


def test_query_encoder_ranker_missing_artifact(tmp_path, flat_index, docs):
    from odqa.errors import ArtifactMismatchError

    ranker = QueryEncoderRanker(model=str(tmp_path / "nothing"), index_dir=flat_index)
    assert ranker.run(query=QUESTION, documents=[]) == {"documents": []}  # nothing to rank: nothing loaded
    with pytest.raises(ArtifactMismatchError, match="does not exist; train one with `odqa train reranker "
                                                    "--student query-encoder --out"):
        ranker.run(query=QUESTION, documents=docs)


def test_rrf_fusion_of_ranker_and_retrieval_orders(make_docs):
    from odqa.components.rankers import _reorder

    docs = make_docs(("a", "A", "a"), ("b", "B", "b"), ("c", "C", "c"), ("d", "D", "d"), ("e", "E", "e"))
    # four scored, the ranker's order c, b, d, a; fused with retrieval order a, b, c, d:
    # a: 1/64 + 1/61, b: 1/62 + 1/62, c: 1/61 + 1/63, d: 1/63 + 1/64; e unscored, last
    out = _reorder(docs, [0.1, 0.5, 0.9, 0.3], None, fusion="rrf")
    assert [d.id for d in out] == ["c", "b", "a", "d", "e"]
    assert out[0].score == pytest.approx(1 / 61 + 1 / 63) and out[0].meta["ranker_score"] == pytest.approx(0.9)
    assert [d.id for d in _reorder(docs, [0.1, 0.5, 0.9, 0.3], None)] == ["c", "b", "d", "a", "e"]
    # a retrieval favourite the ranker puts second stays above the ranker's favourite from far below
    out = _reorder(docs, [0.8, 0.1, 0.2, 0.9], None, fusion="rrf")
    assert [d.id for d in out][:2] == ["a", "d"]


def test_run_reorders_by_score(cross_encoder, docs):
    r = CrossEncoderRanker(model=cross_encoder, batch_size=3)
    ranked = r.run(query=QUESTION, documents=docs)["documents"]
    assert sorted(d.id for d in ranked) == sorted(d.id for d in docs)
    scores = [d.score for d in ranked]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)
    before = {d.id: d.score for d in docs}
    assert all(d.meta["retrieval_score"] == before[d.id] for d in ranked)  # earlier score kept
    assert all(d.meta["title"] for d in ranked)
    assert [d.score for d in docs] == list(before.values())  # inputs not modified
    # deterministic: the same pairs score the same
    again = r.run(query=QUESTION, documents=docs)["documents"]
    assert [d.id for d in again] == [d.id for d in ranked]


def test_top_k(cross_encoder, docs):
    r = CrossEncoderRanker(model=cross_encoder, top_k=2)
    full = CrossEncoderRanker(model=cross_encoder).run(query=QUESTION, documents=docs)["documents"]
    top = r.run(query=QUESTION, documents=docs)["documents"]
    assert [d.id for d in top] == [d.id for d in full[:2]]
    assert len(r.run(query=QUESTION, documents=docs, top_k=3)["documents"]) == 3


def test_empty_documents(cross_encoder):
    r = CrossEncoderRanker(model=cross_encoder)
    assert r.run(query=QUESTION, documents=[]) == {"documents": []}


def test_empty_question(cross_encoder, docs):
    with pytest.raises(EmptyQuestionError):
        CrossEncoderRanker(model=cross_encoder).run(query="  ", documents=docs)


def test_refuses_model_without_classification_head(bare_bert, st_encoder, docs):
    for model in (bare_bert, st_encoder):
        r = CrossEncoderRanker(model=model)
        with pytest.raises(PipelineConfigError) as e:
            r.run(query=QUESTION, documents=docs)
        assert "classification head" in str(e.value) and model in str(e.value)


def test_missing_model(tmp_path):
    with pytest.raises(ResourceNotFoundError):
        CrossEncoderRanker(model=str(tmp_path / "nope")).warm_up()


def test_pipeline_round_trip(cross_encoder, docs):
    p = Pipeline()
    p.add_component("ranker", CrossEncoderRanker(model=cross_encoder, top_k=2))
    text = p.dumps()
    again = Pipeline.loads(text, allowed_modules=["odqa.*"])
    assert again.dumps() == text
    out = again.run({"ranker": {"query": QUESTION, "documents": docs}})
    assert len(out["ranker"]["documents"]) == 2 and isinstance(out["ranker"]["documents"][0], Document)


# --- the zero-shot LM ranker (UPR) -----------------------------------------------------------------
def test_question_likelihood_ranker_orders_by_the_lm_score(tiny_lm, backbone, docs):
    from odqa.lm.question_likelihood import question_log_likelihoods

    from odqa.components.rankers import QuestionLikelihoodRanker

    ranker = QuestionLikelihoodRanker(model=tiny_lm, batch_size=3)
    out = ranker.run(query=QUESTION, documents=docs)["documents"]
    scores = question_log_likelihoods(backbone, QUESTION, [(d.meta["title"], d.content) for d in docs])
    expected = [d.id for _, d in sorted(zip(scores, docs), key=lambda t: -t[0])]
    assert [d.id for d in out] == expected
    assert [d.score for d in out] == pytest.approx(sorted(scores, reverse=True))
    assert {d.id: d.meta["retrieval_score"] for d in out} == {d.id: d.score for d in docs}
    # only the first `candidates` are scored; the rest keep their retrieval order after them
    two = QuestionLikelihoodRanker(model=tiny_lm, candidates=2, top_k=3).run(query=QUESTION, documents=docs)
    assert [d.id for d in two["documents"]][2:] == ["p2"] and len(two["documents"]) == 3


def test_question_likelihood_is_the_mean_token_log_probability_and_batch_free(backbone):
    import torch

    from odqa.lm.question_likelihood import _pair_ids, question_log_likelihoods

    passages = [("Mars", "Mars is the fourth planet from the Sun."), ("Canberra", "Canberra is the capital city.")]
    batched = question_log_likelihoods(backbone, QUESTION, passages, batch_size=2)
    alone = [question_log_likelihoods(backbone, QUESTION, [p], batch_size=1)[0] for p in passages]
    assert batched == pytest.approx(alone, abs=1e-5)  # padding never changes a score
    context, q = _pair_ids(backbone.tokenizer, QUESTION, *passages[0])
    with torch.no_grad():
        logp = torch.log_softmax(backbone.model(input_ids=torch.tensor([context + q])).logits[0].float(), -1)
    manual = sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(q)) / len(q)
    assert alone[0] == pytest.approx(manual, abs=1e-5)


def test_question_likelihood_ranker_settings_and_round_trip(tiny_lm):
    from odqa.components.rankers import QuestionLikelihoodRanker

    with pytest.raises(PipelineConfigError, match="candidates and batch_size must be at least 1"):
        QuestionLikelihoodRanker(model=tiny_lm, candidates=0)
    r = QuestionLikelihoodRanker(model=tiny_lm, top_k=5, candidates=10)
    assert QuestionLikelihoodRanker.from_dict(r.to_dict()).to_dict() == r.to_dict()
    assert r.run(query=QUESTION, documents=[]) == {"documents": []}
    with pytest.raises(EmptyQuestionError):
        r.run(query="  ", documents=[])
