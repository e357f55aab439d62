"""BM25Retriever and DenseRetriever over a tiny built index."""

from __future__ import annotations

import pytest
from haystack import Document, Pipeline

from odqa.components.retrievers import BM25Retriever, DenseRetriever
from odqa.errors import (BadQuestionError, EmptyQuestionError, IndexCorruptError, IndexMismatchError,
                         IndexNotFoundError, PipelineConfigError)
from odqa.index import BM25Config, build_index

from conftest import CORPUS


# --- BM25Retriever -------------------------------------------------------------------------
class TestBM25Retriever:
    def test_init_stores_params(self, flat_index):
        r = BM25Retriever(index_dir=flat_index)
        assert r.index_dir == flat_index and r.top_k == 20

    def test_to_dict_from_dict(self, flat_index):
        r = BM25Retriever(index_dir=flat_index, top_k=7)
        data = r.to_dict()
        assert data == {
            "type": "odqa.components.retrievers.BM25Retriever",
            "init_parameters": {"index_dir": flat_index, "top_k": 7},
        }
        back = BM25Retriever.from_dict(data)
        assert (back.index_dir, back.top_k) == (flat_index, 7)

    def test_run_finds_the_passage(self, flat_index):
        r = BM25Retriever(index_dir=flat_index, top_k=5)
        docs = r.run(query="Who wrote Romeo and Juliet?")["documents"]
        assert docs and all(isinstance(d, Document) for d in docs)
        assert docs[0].id == "p0" and docs[0].meta["title"] == "Romeo and Juliet"
        assert "Shakespeare" in docs[0].content
        assert all(d.score > 0 for d in docs)
        assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)

    def test_top_k_and_override(self, flat_index):
        r = BM25Retriever(index_dir=flat_index, top_k=1)
        query = "the largest river capital city of the world"
        assert len(r.run(query=query)["documents"]) == 1
        many = r.run(query=query, top_k=1000)["documents"]  # capped at the corpus size
        assert 1 < len(many) <= len(CORPUS)
        assert len({d.id for d in many}) == len(many)

    def test_no_match_gives_no_documents(self, flat_index):
        assert BM25Retriever(index_dir=flat_index).run(query="zzzz qqqq") == {"documents": []}

    def test_punctuation_only_question_is_refused(self, flat_index):
        with pytest.raises(BadQuestionError, match="'\\?' has no letter or digit"):
            BM25Retriever(index_dir=flat_index).run(query="?")

    def test_index_settings_are_used_at_query_time(self, tmp_path, corpus_jsonl, st_encoder):
        # the query is tokenized with the index's own BM25 settings (here: English stopwords, no stemmer)
        config = BM25Config(stopwords="en", stemmer=None)
        index_dir = build_index(corpus_jsonl, tmp_path / "sw", encoder=st_encoder, bm25=config, progress=False)
        r = BM25Retriever(index_dir=str(index_dir))
        assert r.run(query="the of and")["documents"] == []
        assert r.run(query="tragedy")["documents"][0].id == "p0"
        assert r.run(query="tragedies")["documents"] == []  # not stemmed

    @pytest.mark.parametrize("query", ["", "   \n\t"])
    def test_empty_question(self, flat_index, query):
        with pytest.raises(EmptyQuestionError, match="empty"):
            BM25Retriever(index_dir=flat_index).run(query=query)

    def test_missing_index(self, tmp_path):
        r = BM25Retriever(index_dir=str(tmp_path / "missing"))
        with pytest.raises(IndexNotFoundError, match="odqa index build"):
            r.warm_up()

    def test_truncated_index(self, copy_index):
        index_dir = copy_index()
        bm25_file = next(p for p in sorted((index_dir / "bm25").iterdir()) if p.stat().st_size > 10)
        bm25_file.write_bytes(bm25_file.read_bytes()[:5])
        with pytest.raises(IndexCorruptError, match=bm25_file.name):
            BM25Retriever(index_dir=str(index_dir)).warm_up()


# --- DenseRetriever ------------------------------------------------------------------------
class TestDenseRetriever:
    def test_init_stores_params(self, flat_index):
        r = DenseRetriever(index_dir=flat_index)
        assert (r.index_dir, r.encoder, r.query_encoder, r.top_k) == (flat_index, None, None, 20)
        assert (r.nprobe, r.ef_search, r.mmap) == (None, None, False)

    def test_to_dict_from_dict(self, flat_index, st_encoder):
        r = DenseRetriever(index_dir=flat_index, encoder=st_encoder, top_k=3)
        data = r.to_dict()
        assert data == {
            "type": "odqa.components.retrievers.DenseRetriever",
            "init_parameters": {"index_dir": flat_index, "encoder": st_encoder, "query_encoder": None, "top_k": 3,
                                "nprobe": None, "ef_search": None, "mmap": False},
        }
        back = DenseRetriever.from_dict(data)
        assert back.to_dict() == data
        tuned = DenseRetriever(index_dir=flat_index, nprobe=8, ef_search=64, mmap=True).to_dict()
        back = DenseRetriever.from_dict(tuned)
        assert (back.nprobe, back.ef_search, back.mmap) == (8, 64, True) and back.to_dict() == tuned

    def test_run(self, flat_index):
        r = DenseRetriever(index_dir=flat_index, top_k=4)
        docs = r.run(query="Who wrote Romeo and Juliet?")["documents"]
        assert len(docs) == 4
        assert {d.id for d in docs} <= {p["id"] for p in CORPUS}
        assert all(d.meta["title"] for d in docs)
        assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)
        assert all(-1.0001 <= d.score <= 1.0001 for d in docs)  # normalized embeddings: cosine
        assert len(r.run(query="Mars", top_k=100)["documents"]) == len(CORPUS)

    def test_passage_text_retrieves_itself(self, flat_index):
        # the same text embeds identically, so the passage scores cosine 1 and ranks first
        p = CORPUS[14]
        docs = DenseRetriever(index_dir=flat_index, top_k=1).run(query=f"{p['title']}\n{p['text']}")["documents"]
        assert docs[0].id == p["id"] and docs[0].score == pytest.approx(1.0, abs=1e-4)

    def test_explicit_same_encoder_is_accepted(self, flat_index, st_encoder):
        r = DenseRetriever(index_dir=flat_index, encoder=st_encoder, top_k=2)
        assert len(r.run(query="Canberra")["documents"]) == 2

    def test_other_encoder_is_refused(self, flat_index, st_encoder_other):
        r = DenseRetriever(index_dir=flat_index, encoder=st_encoder_other)
        with pytest.raises(IndexMismatchError) as e:
            r.run(query="Who wrote Romeo and Juliet?")
        assert "rebuild" in str(e.value) and st_encoder_other in str(e.value)

    def test_dpr_index(self, tmp_path, corpus_tsv, dpr_encoders):
        ctx, _ = dpr_encoders
        index_dir = build_index(corpus_tsv, tmp_path / "dpr", encoder=ctx, progress=False)
        r = DenseRetriever(index_dir=str(index_dir), top_k=5)
        docs = r.run(query="Who painted the Mona Lisa?")["documents"]
        assert len(docs) == 5 and len({d.id for d in docs}) == 5
        assert r._encoder.kind == "dpr"

    def test_empty_question(self, flat_index):
        with pytest.raises(EmptyQuestionError):
            DenseRetriever(index_dir=flat_index).run(query=" ")

    @pytest.mark.parametrize("kind, knob", [("ivf", {"nprobe": 2}), ("ivfpq", {"nprobe": 2}),
                                            ("hnsw", {"ef_search": 40}), ("hnsw-sq8", {"ef_search": 40})])
    def test_search_knob_and_mmap(self, typed_index, kind, knob):
        query = "Who wrote Romeo and Juliet?"
        default = DenseRetriever(index_dir=typed_index(kind), top_k=5).run(query=query)["documents"]
        tuned = DenseRetriever(index_dir=typed_index(kind), top_k=5, mmap=True, **knob)
        docs = tuned.run(query=query)["documents"]
        (name, value), = knob.items()
        assert getattr(tuned._params, {"nprobe": "nprobe", "ef_search": "efSearch"}[name]) == value
        # 30 passages (one IVF list, a 30-node graph): every setting finds the same passages
        assert [d.id for d in docs] == [d.id for d in default] and len(docs) == 5
        assert [d.score for d in docs] == pytest.approx([d.score for d in default], abs=1e-6)

    @pytest.mark.parametrize("kind, knob, message", [
        ("flat", {"nprobe": 8}, "nprobe=8 is set, but index '{dir}' has FAISS type 'flat', which has no nprobe (only "
                                "ivf and ivfpq indexes have); remove nprobe from the retriever (a flat index compares "
                                "the query with every vector)"),
        ("hnsw", {"nprobe": 8}, "nprobe=8 is set, but index '{dir}' has FAISS type 'hnsw', which has no nprobe (only "
                                "ivf and ivfpq indexes have); remove nprobe from the retriever (set ef_search "
                                "instead)"),
        ("ivfpq", {"ef_search": 64}, "ef_search=64 is set, but index '{dir}' has FAISS type 'ivfpq', which has no "
                                     "ef_search (only hnsw and hnsw-sq8 indexes have); remove ef_search from the "
                                     "retriever (set nprobe instead)"),
        ("ivf", {"nprobe": 0}, "nprobe must be a positive integer, got 0 (index '{dir}', FAISS type 'ivf', default "
                               "nprobe 1); set e.g. nprobe: 2, or remove it to use the index's default"),
        ("ivfpq", {"nprobe": True}, "nprobe must be a positive integer, got True (index '{dir}', FAISS type 'ivfpq', "
                                    "default nprobe 1); set e.g. nprobe: 2, or remove it to use the index's default"),
        ("hnsw-sq8", {"ef_search": -5}, "ef_search must be a positive integer, got -5 (index '{dir}', FAISS type "
                                        "'hnsw-sq8', default ef_search 128); set e.g. ef_search: 256, or remove it "
                                        "to use the index's default"),
    ])
    def test_bad_search_knob_is_refused(self, typed_index, kind, knob, message):
        r = DenseRetriever(index_dir=typed_index(kind), **knob)
        with pytest.raises(PipelineConfigError) as e:
            r.warm_up()
        assert str(e.value) == message.format(dir=typed_index(kind))

    def test_missing_index(self, tmp_path):
        with pytest.raises(IndexNotFoundError):
            DenseRetriever(index_dir=str(tmp_path / "missing")).warm_up()


def test_pipeline_yaml_round_trip(flat_index, st_encoder):
    p = Pipeline()
    p.add_component("bm25", BM25Retriever(index_dir=flat_index, top_k=3))
    p.add_component("dense", DenseRetriever(index_dir=flat_index, encoder=st_encoder, top_k=4))
    text = p.dumps()
    again = Pipeline.loads(text, allowed_modules=["odqa.*"])
    assert again.dumps() == text
    assert isinstance(again.get_component("dense"), DenseRetriever)
    out = again.run({"bm25": {"query": "Romeo and Juliet"}, "dense": {"query": "Romeo and Juliet"}})
    assert out["bm25"]["documents"][0].id == "p0"
    assert len(out["dense"]["documents"]) == 4


# --- batches -------------------------------------------------------------------------------
BATCH = ["Who wrote Romeo and Juliet?", "the largest river capital city of the world", "zzzz qqqq",
         "What is the capital of Australia?"]


@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_run_batch_gives_each_question_its_run(kind, flat_index):
    r = BM25Retriever(index_dir=flat_index, top_k=5) if kind == "bm25" else DenseRetriever(index_dir=flat_index, top_k=5)
    batched = r.run_batch(BATCH)["documents"]
    alone = [r.run(query=q)["documents"] for q in BATCH]
    assert len(batched) == len(BATCH)
    assert [[d.id for d in row] for row in batched] == [[d.id for d in row] for row in alone]
    for row, want in zip(batched, alone):
        assert [d.score for d in row] == pytest.approx([d.score for d in want], abs=1e-5)
    assert r.run_batch([]) == {"documents": []}


@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_run_batch_refuses_a_bad_question_by_name(kind, flat_index):
    r = BM25Retriever(index_dir=flat_index) if kind == "bm25" else DenseRetriever(index_dir=flat_index)
    with pytest.raises(EmptyQuestionError):
        r.run_batch(["Who wrote Hamlet?", "   "])
