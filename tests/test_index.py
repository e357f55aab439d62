"""odqa.index and odqa.encoders: building (flat, ivf, ivfpq, hnsw, hnsw-sq8; sentence-transformers and
DPR), the manifest, atomic and resumable builds, memory-mapped loading, search parameters, and the
errors on opening a bad index."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import odqa
import odqa.encoders
import odqa.index
from odqa.data.corpus import corpus_hash, read_corpus
from odqa.encoders import DPREncoder, SentenceTransformerEncoder, load_encoder
from odqa.errors import (IndexCorruptError, IndexMismatchError, IndexNotFoundError, OdqaError, OutputExistsError,
                         OutputLockedError)
from odqa.index import (FAISS_TYPES, BM25Config, SearchIndex, build_index, make_faiss, open_index,
                        set_search_defaults)

from conftest import CORPUS, HIDDEN


def _vectors(index_dir) -> np.ndarray:
    index = SearchIndex.open(index_dir).dense()
    return index.reconstruct_n(0, index.ntotal)


# --- encoders --------------------------------------------------------------------------------
def test_load_encoder_picks_family_from_config(st_encoder, dpr_encoders):
    ctx, question = dpr_encoders
    st = load_encoder(st_encoder)
    assert isinstance(st, SentenceTransformerEncoder) and st.dim == HIDDEN and st.normalize
    dpr = load_encoder(ctx)
    assert isinstance(dpr, DPREncoder) and dpr.dim == HIDDEN and not dpr.normalize
    assert dpr.query_name == question  # derived: ctx_encoder -> question_encoder
    assert load_encoder(st_encoder) is st  # loaded once per process


def test_encoders_embed(st_encoder, dpr_encoders):
    st = load_encoder(st_encoder)
    emb = st.encode_passages(["Mars", ""], ["the red planet", "no title here"])
    assert emb.shape == (2, HIDDEN) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # normalized: inner product is cosine
    dpr = load_encoder(dpr_encoders[0])
    q = dpr.encode_queries(["who wrote romeo and juliet", "capital of australia", "mars"])
    p = dpr.encode_passages(["Mars"], ["the red planet"])
    assert q.shape == (3, HIDDEN) and p.shape == (1, HIDDEN)
    assert q.dtype == np.float32 and p.dtype == np.float32


def test_dpr_without_a_derivable_question_encoder_is_refused(tmp_path, dpr_encoders):
    import shutil

    ctx = tmp_path / "my-dpr-passages"
    shutil.copytree(dpr_encoders[0], ctx)
    with pytest.raises(OdqaError, match="question encoder"):
        load_encoder(str(ctx))


# --- building ----------------------------------------------------------------------------------
def test_manifest(flat_index, corpus_jsonl, st_encoder):
    manifest = json.loads((Path(flat_index) / "manifest.json").read_text())
    assert manifest["kind"] == "odqa-index"
    assert manifest["odqa_version"] == odqa.__version__
    assert manifest["corpus_hash"] == corpus_hash(read_corpus(corpus_jsonl))
    assert manifest["count"] == len(CORPUS)
    assert manifest["encoder"] == st_encoder
    assert manifest["encoder_kind"] == "sentence-transformers"
    assert manifest["dim"] == HIDDEN
    assert manifest["normalized"] is True
    assert len(manifest["encoder_probe"]) == HIDDEN
    assert manifest["faiss"]["type"] == "flat" and manifest["faiss"]["metric"] == "inner_product"
    defaults = BM25Config()
    for key in ("method", "k1", "b", "stemmer", "stopwords"):
        assert manifest["bm25"][key] == getattr(defaults, key)
    # every file is listed with its size and checksum, and nothing else is in the directory
    on_disk = {p.relative_to(flat_index).as_posix() for p in Path(flat_index).rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for rel, info in manifest["files"].items():
        assert info["bytes"] == (Path(flat_index) / rel).stat().st_size
        assert len(info["sha256"]) == 64
    assert {"passages.jsonl", "dense.faiss"} <= on_disk
    assert any(r.startswith("bm25/") for r in on_disk)


def test_build_is_atomic_and_needs_force(flat_index, tmp_path, corpus_jsonl, st_encoder):
    out = tmp_path / "idx"
    build_index(corpus_jsonl, out, encoder=st_encoder, progress=False, limit=5)
    assert not (tmp_path / ".idx.partial").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    before = (out / "manifest.json").read_text()
    with pytest.raises(OdqaError, match="--force"):
        build_index(corpus_jsonl, out, encoder=st_encoder, progress=False)
    assert (out / "manifest.json").read_text() == before  # untouched
    build_index(corpus_jsonl, out, encoder=st_encoder, progress=False, force=True)
    assert json.loads((out / "manifest.json").read_text())["count"] == len(CORPUS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no .partial, no .old
    assert np.allclose(_vectors(out), _vectors(flat_index), atol=1e-5)


@pytest.mark.parametrize("kind, param", [("ivf", "nlist"), ("hnsw", "efSearch")])
def test_build_ivf_and_hnsw(typed_index, st_encoder, kind, param):
    out = Path(typed_index(kind))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["faiss"]["type"] == kind and param in manifest["faiss"]
    index = open_index(out)
    faiss_index = index.dense()
    assert faiss_index.ntotal == len(CORPUS)
    # a passage's own embedding finds it first
    enc = load_encoder(st_encoder)
    p = index.passages[11]
    q = enc.encode_passages([p.title], [p.text])
    scores, ids = faiss_index.search(q, 3)
    assert ids[0][0] == 11
    assert scores[0][0] == pytest.approx(1.0, abs=1e-4)
    # the stored vectors read back by passage id, whichever the FAISS type (IVF needs a direct map)
    ids = [index.passages[i].id for i in (11, 3)]
    assert np.allclose(index.vectors(ids), enc.encode_passages(
        [index.passages[i].title for i in (11, 3)], [index.passages[i].text for i in (11, 3)]), atol=1e-5)


@pytest.mark.parametrize("kind, params", [
    ("ivfpq", {"nlist": 1, "nprobe": 1, "pq_m": HIDDEN // 2, "pq_nbits": 4, "train_size": len(CORPUS),
               "train_seed": 0}),  # 30 training vectors: 16 centroids per sub-quantizer, not 256
    ("hnsw-sq8", {"M": 32, "efConstruction": 80, "efSearch": 128, "sq": "8bit", "train_size": len(CORPUS),
                  "train_seed": 0}),
])
def test_build_compressed_types(typed_index, st_encoder, kind, params):
    index = open_index(typed_index(kind))
    assert index.manifest["faiss"] == {"type": kind, "metric": "inner_product", **params}
    enc = load_encoder(st_encoder)
    emb = enc.encode_passages([p.title for p in index.passages], [p.text for p in index.passages])
    scores, rows = index.dense().search(emb, 5)
    assert (rows >= 0).all()
    # approximate scores: close to the exact inner products of the same passages...
    exact = np.take_along_axis(emb @ emb.T, rows, axis=1)
    assert np.abs(scores - exact).max() < 0.05
    # ...and exactly the inner products with the decoded vectors, which vectors() returns
    ids = [index.passages[i].id for i in range(len(CORPUS))]
    decoded = index.vectors(ids)
    assert np.allclose(scores, np.einsum("qd,qkd->qk", emb, decoded[rows]), atol=1e-4)
    cosine = (decoded * emb).sum(1) / np.linalg.norm(decoded, axis=1) / np.linalg.norm(emb, axis=1)
    assert cosine.min() > (0.98 if kind == "ivfpq" else 0.9999)


@pytest.mark.parametrize("kind, overlap", [("ivf", 0.9), ("ivfpq", 0.6), ("hnsw", 0.95), ("hnsw-sq8", 0.95)])
def test_each_type_finds_near_neighbours(kind, overlap):
    # 1,000 random unit vectors; the queries are noisy copies of 200 of them. At its manifest
    # defaults each type finds the source first and most of the exact top 10.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:200] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    index, params = make_faiss(kind, x)
    _, rows = set_search_defaults(index, {"type": kind, **params}).search(q, 10)
    assert (rows[:, 0] == np.arange(200)).mean() >= 0.98
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)]) >= overlap


@pytest.mark.parametrize("kind", FAISS_TYPES)
def test_mmap_loading(typed_index, kind):
    path = typed_index(kind)
    index = SearchIndex.open(path)  # its own object: nothing loaded yet
    mapped = index.dense(mmap=True)
    assert index.dense(mmap=True) is mapped  # read once
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file is mapped into this process, not copied
        assert os.path.realpath(Path(path) / "dense.faiss") in maps.read_text()
    ids = [p.id for p in index.passages]
    vectors = index.vectors(ids)  # from the mapped index (IVF types: their direct map built on it)
    assert vectors.shape == (len(CORPUS), HIDDEN)
    plain = SearchIndex.open(path)
    assert np.array_equal(plain.vectors(ids), vectors)
    for a, b in zip(mapped.search(vectors[:6], 5), plain.dense().search(vectors[:6], 5)):
        assert np.array_equal(a, b)


def test_mmap_falls_back_to_a_plain_read(typed_index, monkeypatch, caplog):
    import faiss

    real = faiss.read_index

    def no_mmap(path, flags=0):
        if flags:
            raise RuntimeError("Error in read_index: mmap not supported here")
        return real(path)

    monkeypatch.setattr(faiss, "read_index", no_mmap)
    index = SearchIndex.open(typed_index("ivfpq"))
    with caplog.at_level(logging.WARNING, logger="odqa.index"):
        dense = index.dense(mmap=True)
    assert dense.ntotal == len(CORPUS) and dense.nprobe == index.manifest["faiss"]["nprobe"]
    assert "cannot memory-map dense.faiss (Error in read_index: mmap not supported here)" in caplog.text


def test_search_params_override_the_manifest(typed_index):
    ivf = open_index(typed_index("ivfpq"))
    assert ivf.search_params() is None
    assert ivf.search_params(nprobe=3).nprobe == 3
    assert open_index(typed_index("hnsw-sq8")).search_params(ef_search=7).efSearch == 7
    # the refusals, named by knob and index type, are tested through DenseRetriever (test_retrievers.py)


def test_pq_m_sets_the_code_size(tmp_path, corpus_jsonl, st_encoder):
    out = build_index(corpus_jsonl, tmp_path / "pq", encoder=st_encoder, faiss_type="ivfpq", pq_m=16, progress=False)
    index = open_index(out)
    assert index.manifest["faiss"]["pq_m"] == 16
    assert index.dense().code_size == 16 * 4 // 8  # 16 codes of 4 bits


@pytest.mark.parametrize("kind, pq_m, message", [
    ("flat", 8, "--pq-m 8 applies only to --faiss ivfpq, not --faiss flat; drop --pq-m, or pass --faiss ivfpq"),
    ("ivfpq", 0, "--pq-m 0 must be a positive integer"),
    ("ivfpq", 5, r"--pq-m 5 does not divide the encoder's dimension 32 .*use one of \[1, 2, 4, 8, 16, 32\], or "
                 "leave it out for 16"),
])
def test_bad_pq_m_is_refused(tmp_path, corpus_jsonl, st_encoder, kind, pq_m, message):
    with pytest.raises(OdqaError, match=message):
        build_index(corpus_jsonl, tmp_path / "x", encoder=st_encoder, faiss_type=kind, pq_m=pq_m, progress=False)
    assert not (tmp_path / "x").exists()


def test_vectors_by_passage_id(flat_index, st_encoder):
    index = open_index(flat_index)
    ids = [p.id for p in index.passages[:4]][::-1]
    assert np.array_equal(index.vectors(ids), _vectors(flat_index)[:4][::-1])
    assert index.vectors([]).shape == (0, HIDDEN)
    with pytest.raises(IndexMismatchError, match="passage id 'nope' is not in index .*1 of 2 unknown.*index_dir"):
        index.vectors([ids[0], "nope"])


def test_build_unknown_faiss_type(tmp_path, corpus_jsonl, st_encoder):
    with pytest.raises(OdqaError, match="unknown FAISS index type 'pq'"):
        build_index(corpus_jsonl, tmp_path / "x", encoder=st_encoder, faiss_type="pq", progress=False)
    assert not (tmp_path / "x").exists()


def test_build_from_dpr_tsv_with_dpr_encoder(tmp_path, corpus_tsv, dpr_encoders):
    ctx, question = dpr_encoders
    out = build_index(corpus_tsv, tmp_path / "dpr", encoder=ctx, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoder_kind"] == "dpr"
    assert manifest["query_encoder"] == question
    assert manifest["normalized"] is False
    assert manifest["dim"] == HIDDEN and manifest["count"] == len(CORPUS)
    index = open_index(out)
    index.check_encoder(load_encoder(ctx))  # the same pair passes the probe check
    assert index.dense().ntotal == len(CORPUS)


class _FlakyEncoder:
    """Wraps a real encoder; raises on passage chunk number ``fail_at`` and counts chunk calls."""

    def __init__(self, inner, fail_at: int | None):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def encode_passages(self, titles, texts, batch_size=16):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return self.inner.encode_passages(titles, texts, batch_size)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_build_resumes_after_a_kill(tmp_path, monkeypatch, corpus_jsonl, st_encoder, flat_index):
    monkeypatch.setattr(odqa.index, "CHUNK", 8)  # 30 passages -> 4 chunks
    real = load_encoder(st_encoder)
    flaky = _FlakyEncoder(real, fail_at=2)
    monkeypatch.setattr(odqa.encoders, "load_encoder", lambda name, query_name=None: flaky)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_jsonl, out, encoder=st_encoder, progress=False)
    partial = tmp_path / ".idx.partial"
    assert not out.exists()
    assert sorted(p.name for p in (partial / "emb").iterdir()) == ["00000.npy"]

    counting = _FlakyEncoder(real, fail_at=None)
    monkeypatch.setattr(odqa.encoders, "load_encoder", lambda name, query_name=None: counting)
    build_index(corpus_jsonl, out, encoder=st_encoder, progress=False)
    assert counting.calls == 3  # only the 3 chunks that were missing
    assert not partial.exists()
    assert np.allclose(_vectors(out), _vectors(flat_index), atol=1e-5)
    assert (out / "passages.jsonl").read_bytes() == (Path(flat_index) / "passages.jsonl").read_bytes()


def test_partial_from_another_build_is_discarded(tmp_path, monkeypatch, corpus_jsonl, st_encoder):
    monkeypatch.setattr(odqa.index, "CHUNK", 8)
    real = load_encoder(st_encoder)
    flaky = _FlakyEncoder(real, fail_at=2)
    monkeypatch.setattr(odqa.encoders, "load_encoder", lambda name, query_name=None: flaky)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_jsonl, out, encoder=st_encoder, progress=False, limit=20)
    # a different build (other passage count) must not reuse the first one's chunks
    counting = _FlakyEncoder(real, fail_at=None)
    monkeypatch.setattr(odqa.encoders, "load_encoder", lambda name, query_name=None: counting)
    build_index(corpus_jsonl, out, encoder=st_encoder, progress=False)
    assert counting.calls == 4
    assert json.loads((out / "manifest.json").read_text())["count"] == len(CORPUS)


# --- what a build may replace; reproducible, locked builds -----------------------------------
def test_force_replaces_only_an_odqa_index(tmp_path, corpus_jsonl, st_encoder):
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("x")
    for force in (False, True):
        with pytest.raises(OutputExistsError) as e:
            build_index(corpus_jsonl, precious, encoder=st_encoder, progress=False, force=force)
        msg = str(e.value)
        assert f"'{precious}' exists and is not made by odqa" in msg and "--force" not in msg
    assert (precious / "thesis.txt").read_text() == "x" and (precious / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no partial build, no lock left


def test_a_build_into_an_empty_directory(tmp_path, corpus_jsonl, st_encoder):
    (tmp_path / "idx").mkdir()
    build_index(corpus_jsonl, tmp_path / "idx", encoder=st_encoder, progress=False, limit=3)
    assert open_index(tmp_path / "idx").manifest["count"] == 3


def test_a_build_while_another_runs_is_refused(tmp_path, corpus_jsonl, st_encoder, hold_lock):
    pid = hold_lock(tmp_path / "idx").pid
    with pytest.raises(OutputLockedError, match=f"PID {pid}"):
        build_index(corpus_jsonl, tmp_path / "idx", encoder=st_encoder, progress=False)
    assert not (tmp_path / "idx").exists()


def test_two_clean_builds_are_byte_identical(tmp_path, corpus_jsonl, st_encoder):
    # two processes with different string-hash seeds (bm25s numbered its vocabulary in set order),
    # each building every FAISS type
    code = ("import sys; from odqa.index import build_index; "
            "[build_index(sys.argv[1], f'{sys.argv[2]}/{kind}', encoder=sys.argv[3], faiss_type=kind, progress=False) "
            "for kind in sys.argv[4].split(',')]")
    builds = [subprocess.Popen([sys.executable, "-c", code, corpus_jsonl, str(tmp_path / f"seed{seed}"), st_encoder,
                                ",".join(FAISS_TYPES)], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                               cwd=Path(__file__).resolve().parent.parent) for seed in (1, 2)]  # side by side
    assert [b.wait(timeout=600) for b in builds] == [0, 0]
    for kind in FAISS_TYPES:
        outs = [tmp_path / f"seed{seed}" / kind for seed in (1, 2)]
        files = [sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) for out in outs]
        assert files[0] == files[1] and "bm25/vocab.index.json" in files[0]
        for rel in files[0]:
            assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), f"{kind}: {rel} differs"


# --- opening ---------------------------------------------------------------------------------
def test_a_directory_that_is_not_an_index(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("x")
    with pytest.raises(IndexNotFoundError) as e:
        open_index(etc)
    msg = str(e.value)
    assert f"'{etc}' is not an odqa index" in msg and f"--out {etc}" not in msg  # never build into it


def test_an_edited_manifest_is_refused(copy_index):
    index_dir = copy_index()
    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "encoder": "someone-else/encoder"}, indent=2))
    with pytest.raises(IndexCorruptError, match="manifest.json was edited .*--force"):
        open_index(index_dir)
    del manifest["manifest_sha256"]
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(IndexCorruptError, match="carries no checksum"):
        open_index(index_dir)



def test_open_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError) as e:
        open_index(tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "odqa index build" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="no manifest.json"):
        open_index(tmp_path / "empty")


@pytest.mark.parametrize("rel", ["dense.faiss", "passages.jsonl"])
def test_open_truncated_file(copy_index, rel):
    index_dir = copy_index()
    f = index_dir / rel
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError) as e:
        open_index(index_dir)
    assert rel in str(e.value) and "truncated" in str(e.value) and "--force" in str(e.value)


def test_open_altered_file_same_size(copy_index):
    index_dir = copy_index()
    f = index_dir / "passages.jsonl"
    data = bytearray(f.read_bytes())
    i = data.index(b"Shakespeare")
    data[i : i + 11] = b"Shakespeard"
    f.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="checksum"):
        open_index(index_dir)


def test_open_missing_file_and_bad_manifest(copy_index):
    index_dir = copy_index()
    (index_dir / "dense.faiss").unlink()
    with pytest.raises(IndexCorruptError, match="dense.faiss is missing"):
        open_index(index_dir)
    index_dir = copy_index()
    (index_dir / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="manifest.json is unreadable"):
        open_index(index_dir)


def test_check_encoder_refuses_another_encoder(flat_index, st_encoder, st_encoder_other):
    index = open_index(flat_index)
    index.check_encoder(load_encoder(st_encoder))
    with pytest.raises(IndexMismatchError) as e:
        index.check_encoder(load_encoder(st_encoder_other))
    assert st_encoder in str(e.value) and st_encoder_other in str(e.value)


def test_open_index_is_shared(flat_index):
    assert open_index(flat_index) is open_index(flat_index)
    index = open_index(flat_index)
    assert [p.id for p in index.passages] == [p["id"] for p in CORPUS]
    assert index.bm25_config() == BM25Config()
