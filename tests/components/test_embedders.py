"""QueryEmbedder: the question's vector by the index's encoder, for a document store's retriever."""

from __future__ import annotations

import numpy as np
import pytest

from odqa.components.embedders import QueryEmbedder
from odqa.components.retrievers import DenseRetriever
from odqa.errors import EmptyQuestionError, IndexMismatchError, IndexNotFoundError, PipelineConfigError
from odqa.index import open_index

from conftest import HIDDEN

QUESTION = "Who wrote Romeo and Juliet?"


def test_init_stores_params(flat_index):
    embedder = QueryEmbedder(index_dir=flat_index)
    assert (embedder.index_dir, embedder.encoder, embedder.query_encoder) == (flat_index, None, None)


def test_needs_an_index_or_an_encoder():
    with pytest.raises(PipelineConfigError, match="QueryEmbedder needs index_dir .* or encoder .*; set one"):
        QueryEmbedder()


def test_to_dict_from_dict(flat_index, st_encoder):
    embedder = QueryEmbedder(index_dir=flat_index, encoder=st_encoder)
    data = embedder.to_dict()
    assert data == {"type": "odqa.components.embedders.QueryEmbedder",
                    "init_parameters": {"index_dir": flat_index, "encoder": st_encoder, "query_encoder": None}}
    again = QueryEmbedder.from_dict(data)
    assert (again.index_dir, again.encoder) == (flat_index, st_encoder)


def test_run_embeds_as_the_dense_retriever(flat_index):
    embedding = QueryEmbedder(index_dir=flat_index).run(query=QUESTION)["embedding"]
    assert isinstance(embedding, list) and len(embedding) == HIDDEN and all(isinstance(x, float) for x in embedding)
    # the dense retriever's top score is the inner product of this vector and the passage's stored one
    top = DenseRetriever(index_dir=flat_index, top_k=1).run(query=QUESTION)["documents"][0]
    stored = open_index(flat_index).vectors([top.id])[0]
    assert float(np.dot(embedding, stored)) == pytest.approx(top.score, abs=1e-5)


def test_encoder_without_an_index(st_encoder, flat_index):
    alone = QueryEmbedder(encoder=st_encoder).run(query=QUESTION)["embedding"]
    assert alone == pytest.approx(QueryEmbedder(index_dir=flat_index).run(query=QUESTION)["embedding"], abs=1e-6)


def test_run_batch_gives_each_question_its_run(flat_index):
    embedder = QueryEmbedder(index_dir=flat_index)
    questions = [QUESTION, "What is the capital of Australia?"]
    batch = embedder.run_batch(questions)["embedding"]
    assert len(batch) == 2
    for question, vector in zip(questions, batch):
        assert vector == pytest.approx(embedder.run(query=question)["embedding"], abs=1e-5)
    assert embedder.run_batch([]) == {"embedding": []}


def test_question_is_checked(flat_index):
    with pytest.raises(EmptyQuestionError, match="the question is empty"):
        QueryEmbedder(index_dir=flat_index).run(query="   ")


def test_other_encoder_is_refused(flat_index, st_encoder_other):
    with pytest.raises(IndexMismatchError, match="was built with encoder"):
        QueryEmbedder(index_dir=flat_index, encoder=st_encoder_other).warm_up()


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        QueryEmbedder(index_dir=str(tmp_path / "nope")).warm_up()
