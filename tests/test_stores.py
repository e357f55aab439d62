"""odqa.stores: an odqa index exported into a Qdrant document store (local mode, in-process, in
``tmp_path``), and pipelines that search it with Haystack's ``QdrantEmbeddingRetriever`` through
odqa's packer and reader; the slow test runs ``pipelines/frozen_reader_qdrant.yml`` on the real index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import odqa
from odqa.cli import main
from odqa.components.retrievers import DenseRetriever
from odqa.errors import (IndexError_, IndexMismatchError, IndexNotFoundError, OdqaError, OutputExistsError,
                         OutputLockedError)
from odqa.index import open_index
from odqa.stores import ExportResult, export_index, qdrant_store

from conftest import CORPUS, HIDDEN, _rel, pipeline_dict, user_odqa_home

pytest.importorskip("haystack_integrations.document_stores.qdrant", reason="needs the qdrant extra")

REPO = Path(__file__).resolve().parent.parent
RETRIEVER = "haystack_integrations.components.retrievers.qdrant.retriever.QdrantEmbeddingRetriever"
STORE = "haystack_integrations.document_stores.qdrant.document_store.QdrantDocumentStore"
QUESTION = "Who wrote Romeo and Juliet?"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, flat_index) -> Path:
    """The tiny index exported once into a Qdrant local store (collection ``tiny``, the index's name)."""
    store = tmp_path_factory.mktemp("qdrant") / "store"
    result = export_index(flat_index, path=store, progress=False)
    assert (result.written, result.already_there, result.collection_count) == (len(CORPUS), 0, len(CORPUS))
    return store


def read_store(store: Path, collection: str = "tiny") -> list:
    """Every document in a store's collection, with its vector; the store closed again."""
    reader = qdrant_store(collection, HIDDEN, path=store)
    reader.return_embedding = True
    try:
        return reader.filter_documents()
    finally:
        reader.close()


def qdrant_pipeline(directory: Path, store: Path, *, index_dir, encoder, lm, hybrid: bool = True,
                    top_k: int = 5) -> Path:
    """The test pipeline (conftest.pipeline_dict) with its dense stage a QueryEmbedder feeding a
    QdrantEmbeddingRetriever over ``store``; without ``hybrid``, Qdrant alone feeds the packer.
    Every path is relative to ``directory``, where the YAML is written."""
    data = pipeline_dict(directory, index_dir=index_dir, encoder=encoder, lm=lm, top_k=top_k)
    components, connections = data["components"], data["connections"]
    components["embed"] = {"type": "odqa.components.embedders.QueryEmbedder",
                           "init_parameters": {"index_dir": _rel(index_dir, directory)}}
    components["dense"] = {"type": RETRIEVER, "init_parameters": {"top_k": top_k, "document_store": {
        "type": STORE, "init_parameters": {"path": _rel(store, directory), "index": "tiny", "embedding_dim": HIDDEN,
                                           "similarity": "dot_product", "progress_bar": False}}}}
    connections.insert(0, {"sender": "embed.embedding", "receiver": "dense.query_embedding"})
    if not hybrid:
        del components["bm25"], components["join"]
        connections[:] = [c for c in connections if not c["receiver"].startswith("join.")
                          and not c["sender"].startswith("join.")]
        connections.insert(1, {"sender": "dense.documents", "receiver": "packer.documents"})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "qdrant.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def write_qdrant_pipeline(tmp_path, flat_index, st_encoder, tiny_lm):
    def write(store: Path, **kw) -> Path:
        return qdrant_pipeline(tmp_path / "pipelines", store, index_dir=flat_index, encoder=st_encoder, lm=tiny_lm,
                               **kw)

    return write


# --- export ----------------------------------------------------------------------------------
def test_export_writes_passages_with_the_index_vectors(exported, flat_index):
    docs = {d.id: d for d in read_store(exported)}
    assert set(docs) == {p["id"] for p in CORPUS}
    index = open_index(flat_index)
    for p in CORPUS:
        doc = docs[p["id"]]
        assert (doc.content, doc.meta) == (p["text"], {"title": p["title"]})
    ids = [p["id"] for p in CORPUS]
    stored = np.array([docs[i].embedding for i in ids], dtype=np.float32)
    assert np.allclose(stored, index.vectors(ids), atol=1e-6)  # the index's own vectors, not re-embedded


def test_export_again_writes_nothing_and_subsets_resume(tmp_path, exported, flat_index):
    again = export_index(flat_index, path=exported, progress=False)
    assert isinstance(again, ExportResult)
    assert (again.passages, again.written, again.already_there, again.collection_count) == (30, 0, 30, 30)
    # a partial export (as a killed run leaves) is completed by the next one, which writes the rest only
    store = tmp_path / "partial"
    first = export_index(flat_index, path=store, ids=["p3", "p1", "p3"], progress=False)
    assert (first.passages, first.written, first.collection_count) == (2, 2, 2)
    rest = export_index(flat_index, path=store, progress=False)
    assert (rest.written, rest.already_there, rest.collection_count) == (28, 2, 30)
    fresh = export_index(flat_index, path=store, recreate=True, ids=["p0"], progress=False)
    assert (fresh.written, fresh.collection_count) == (1, 1)


def test_export_collection_name(tmp_path, flat_index):
    result = export_index(flat_index, path=tmp_path / "s", collection="passages", ids=["p0"], progress=False)
    assert result.collection == "passages" and [d.id for d in read_store(tmp_path / "s", "passages")] == ["p0"]


# --- export errors -----------------------------------------------------------------------------
def test_export_refuses_a_directory_that_is_not_a_qdrant_store(flat_index):
    with pytest.raises(OutputExistsError, match=r"--path '.*tiny' exists and is not a Qdrant local store .*choose a "
                                                r"new directory"):
        export_index(flat_index, path=flat_index, progress=False)
    assert not (Path(flat_index) / "meta.json").exists()  # nothing written into the index


def test_export_refuses_a_file(tmp_path, flat_index):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="--path '.*f' is a file; name a directory"):
        export_index(flat_index, path=tmp_path / "f", progress=False)


def test_export_needs_one_place(tmp_path, flat_index):
    for where in ({}, {"path": tmp_path / "s", "url": "http://127.0.0.1:6333"}):
        with pytest.raises(OdqaError, match="exactly one of --path DIR .* or --url URL"):
            export_index(flat_index, progress=False, **where)


def test_export_unknown_store_and_ids(tmp_path, flat_index):
    with pytest.raises(OdqaError, match=r"unknown document store 'faiss'; use one of \['qdrant'\]"):
        export_index(flat_index, to="faiss", path=tmp_path / "s")
    with pytest.raises(IndexMismatchError, match="passage id 'nope' is not in index .*1 of 2 unknown"):
        export_index(flat_index, path=tmp_path / "s", ids=["p0", "nope"])


def test_export_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError, match="does not exist; build it with"):
        export_index(tmp_path / "nope", path=tmp_path / "s")


def test_export_refuses_a_collection_of_another_dimension(tmp_path, flat_index):
    other = qdrant_store("tiny", HIDDEN * 2, path=tmp_path / "s")
    other.count_documents()  # creates the collection, 64-d
    other.close()
    with pytest.raises(IndexMismatchError, match=r"vector size '64'.*this index has 32-d vectors scored by "
                                                 r"dot_product: pass --recreate to replace collection 'tiny'"):
        export_index(flat_index, path=tmp_path / "s", progress=False)
    assert export_index(flat_index, path=tmp_path / "s", recreate=True, progress=False).written == 30


def test_export_to_a_store_open_elsewhere(tmp_path, flat_index):
    holder = qdrant_store("tiny", HIDDEN, path=tmp_path / "s")
    holder.count_documents()  # holds the directory's lock, as a running pipeline would
    try:
        with pytest.raises(OutputLockedError, match="the Qdrant store '.*s' is open in another process .*--url"):
            export_index(flat_index, path=tmp_path / "s", progress=False)
    finally:
        holder.close()
    assert export_index(flat_index, path=tmp_path / "s", progress=False).written == 30  # closed: free again


def test_export_to_a_server_that_is_not_there(flat_index):
    with pytest.raises(OdqaError, match=r"cannot use the Qdrant server at 'http://127.0.0.1:9'.*check --url"):
        export_index(flat_index, url="http://127.0.0.1:9", progress=False)


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_export(tmp_path, flat_index, capsys):
    store = tmp_path / "s"
    assert main(["index", "export", "--to", "qdrant", "--index", flat_index, "--path", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"exported 30 passages of {flat_index} to qdrant at {store}, collection 'tiny': 30 written")
    assert main(["index", "export", "--to", "qdrant", "--index", flat_index, "--path", str(store), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["written"], result["already_there"], result["collection_count"]) == (0, 30, 30)


def test_cli_export_error_is_one_line(flat_index, capsys):
    code = main(["index", "export", "--to", "qdrant", "--index", flat_index, "--path", flat_index])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: --path") and "is not a Qdrant local store" in err


# --- pipelines on the store ----------------------------------------------------------------------
def test_qdrant_documents_reach_the_packer_and_reader(exported, write_qdrant_pipeline, flat_index):
    """Qdrant alone feeds the packer: the reader's passages are Qdrant's documents, with the index's
    ids, the title in meta and the dot-product scores the dense retriever gives."""
    with odqa.load(str(write_qdrant_pipeline(exported, hybrid=False))) as qa:
        answer, outputs = qa.ask_with_outputs(QUESTION)
    found = outputs["dense"]["documents"]
    faiss = DenseRetriever(index_dir=flat_index, top_k=5).run(query=QUESTION)["documents"]
    assert [d.id for d in found] == [d.id for d in faiss]
    assert [d.score for d in found] == pytest.approx([d.score for d in faiss], abs=1e-5)
    assert answer.passages and [(p.id, p.title, p.text, p.score) for p in answer.passages] == [
        (d.id, d.meta["title"], d.content, d.score) for d in found[:len(answer.passages)]]
    assert set(answer.timings) == {"embed", "dense", "packer", "reader", "total"}
    assert isinstance(answer.answer, str)


def test_hybrid_pipeline_joins_qdrant_and_bm25(exported, write_qdrant_pipeline, pipeline_yaml, tmp_path,
                                               monkeypatch):
    """BM25 and Qdrant through the RRF join: the same passages as the FAISS pipeline, from any
    working directory (the store's relative path resolves against the YAML's), batched or not."""
    path = write_qdrant_pipeline(exported)
    assert yaml.safe_load(path.read_text())["components"]["dense"]["init_parameters"]["document_store"][
        "init_parameters"]["path"].startswith("..")
    monkeypatch.chdir(tmp_path)
    with odqa.load(str(path)) as qa:
        questions = [QUESTION, "Who painted the Mona Lisa?", "", "What is the capital of Australia?"]
        alone = qa.ask_many(questions, progress=False)
        batched = qa.ask_many(questions, progress=False, batch_size=4)
    with odqa.load(str(pipeline_yaml)) as faiss:
        reference = faiss.ask_many(questions, progress=False)
    assert [r.ok for r in alone] == [r.ok for r in batched] == [True, True, False, True]
    for a, b, ref in zip(alone, batched, reference):
        if a.ok:
            assert [p.id for p in a.passages] == [p.id for p in b.passages] == [p.id for p in ref.passages]
            assert a.dropped_ids == b.dropped_ids == ref.dropped_ids
            assert (a.answer, b.answer) == (ref.answer, ref.answer)
            assert all(p.title == {c["id"]: c["title"] for c in CORPUS}[p.id] for p in a.passages)


def test_closing_the_pipeline_frees_the_store(exported, write_qdrant_pipeline, flat_index):
    qa = odqa.load(str(write_qdrant_pipeline(exported, hybrid=False)))
    qa.ask(QUESTION)
    with pytest.raises(OutputLockedError):  # the pipeline holds the local store
        export_index(flat_index, path=exported, progress=False)
    qa.close()
    assert export_index(flat_index, path=exported, progress=False).already_there == 30
    assert qa.ask(QUESTION).passages  # a closed pipeline opens the store again when asked
    qa.close()


def test_ablation_shares_the_open_store(exported, write_qdrant_pipeline):
    """`odqa eval --ablate` copies the pipeline: the copy runs the same stage instances, so the
    local store (one client at a time) is not opened twice."""
    from odqa.eval import harness

    with odqa.load(str(write_qdrant_pipeline(exported))) as qa:
        full = qa.ask(QUESTION)
        no_bm25 = harness.without_stage(qa, "bm25")
        assert no_bm25.pipeline.get_component("dense") is qa.pipeline.get_component("dense")
        assert no_bm25.ask(QUESTION).passages and full.passages


def test_pipeline_on_an_empty_store_says_to_export(tmp_path, write_qdrant_pipeline):
    with odqa.load(str(write_qdrant_pipeline(tmp_path / "never-exported", hybrid=False))) as qa:
        with pytest.raises(IndexNotFoundError, match=r"component 'dense' searches an empty document store "
                                                     r"\(QdrantDocumentStore, path '.*never-exported', index 'tiny'\);"
                                                     r" fill it first, .*odqa index export --to qdrant"):
            qa.ask(QUESTION)


def test_pipeline_on_a_store_it_cannot_open(exported, write_qdrant_pipeline):
    holder = qdrant_store("tiny", HIDDEN, path=exported)
    holder.count_documents()  # another client holds the local store
    try:
        with odqa.load(str(write_qdrant_pipeline(exported, hybrid=False))) as qa:
            with pytest.raises(IndexError_, match=r"component 'dense' cannot open its document store "
                                                  r"\(QdrantDocumentStore, path '.*store', index 'tiny'\): Storage "
                                                  r"folder .* already accessed .*; check the store's settings in the "
                                                  r"pipeline file"):
                qa.ask(QUESTION)
    finally:
        holder.close()


# --- slow: the shipped pipeline on the real index --------------------------------------------------
@pytest.mark.slow
def test_frozen_reader_qdrant_answers_a_bundled_question(tmp_path):
    """``pipelines/frozen_reader_qdrant.yml`` as shipped but for its store's path (``tmp_path``), on
    the whole index exported there (about 10 s): Qdrant's top 100 are FAISS's, with their scores,
    and the packer and reader answer from them."""
    index_dir, pipelines = REPO / "indexes" / "wiki-vital", REPO / "pipelines"
    if not (index_dir / "manifest.json").exists():
        pytest.fail(f"{index_dir} is missing; build it with `make index` (make test does this first)")
    question = "Who wrote Hamlet?"
    store = tmp_path / "wiki-vital-qdrant"
    result = export_index(index_dir, path=store, progress=False)
    assert (result.collection, result.written, result.collection_count) == ("wiki-vital", 10_033, 10_033)
    # the shipped file, its store moved to tmp_path; its other relative paths reach the repository's
    text = (pipelines / "frozen_reader_qdrant.yml").read_text(encoding="utf-8")
    assert text.count("path: ../indexes/wiki-vital-qdrant\n") == 1
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "artifacts").symlink_to(pipelines / "artifacts")
    (tmp_path / "indexes").mkdir()
    (tmp_path / "indexes" / "wiki-vital").symlink_to(index_dir)
    yml = tmp_path / "pipelines" / "frozen_reader_qdrant.yml"
    yml.write_text(text.replace("path: ../indexes/wiki-vital-qdrant\n", f"path: {store}\n"), encoding="utf-8")
    with user_odqa_home():  # the dequantized backbone cached once, as the other slow tests share it
        faiss = DenseRetriever(index_dir=str(index_dir), top_k=100).run(query=question)["documents"]
        with odqa.load(str(yml)) as qa:
            assert Path(qa.pipeline.get_component("dense")._document_store.path) == store
            answer, outputs = qa.ask_with_outputs(question)
    assert "shakespeare" in answer.answer.lower()
    assert answer.passages[0].title == "Hamlet"
    from_qdrant = outputs["dense"]["documents"]
    assert [d.id for d in from_qdrant] == [d.id for d in faiss]
    assert [d.score for d in from_qdrant] == pytest.approx([d.score for d in faiss], abs=1e-5)
    assert answer.passages[0].id in {d.id for d in from_qdrant}
