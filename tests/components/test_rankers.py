"""CrossEncoderRanker with a tiny random BertForSequenceClassification cross-encoder."""

from __future__ import annotations

import pytest
from haystack import Document, Pipeline

from odqa.components.rankers import CrossEncoderRanker
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
        "init_parameters": {"model": cross_encoder, "top_k": 3, "batch_size": 2, "max_length": 128},
    }
    assert CrossEncoderRanker.from_dict(data).to_dict() == data


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
