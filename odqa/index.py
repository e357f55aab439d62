"""Build and open odqa indexes: a bm25s BM25 index plus a FAISS inner-product index.

Layout of ``indexes/NAME/``::

    manifest.json    corpus hash, encoder, dim, count, BM25 and FAISS settings, odqa version,
                     and the size and sha256 of every file below (checked on open)
    passages.jsonl   the passages, in index order
    bm25/            bm25s files
    dense.faiss      FAISS index (flat, IVF or HNSW), inner product as in DPR

A build writes into ``.NAME.partial`` beside the target and renames it into place
at the end, so a killed build never leaves a half-written index. Embeddings are
saved there in chunks, so restarting the same build resumes where it stopped.
A build holds ``.NAME.lock`` (one builder at a time), replaces only an odqa index
(``--force``), and is byte-reproducible: two builds of one corpus give identical files.
``manifest.json`` carries its own checksum (``manifest_sha256``), checked on open.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from odqa import __version__
from odqa.configs import BM25Config
from odqa.data.corpus import Passage, corpus_hash, read_corpus
from odqa.errors import IndexCorruptError, IndexMismatchError, IndexNotFoundError, OdqaError
from odqa.runs import INDEX_KIND, OutputLock, atomic_write_bytes, check_replaceable, declared_kind, file_sha256

FAISS_TYPES = ("flat", "ivf", "hnsw")
HASH_LIMIT = 512 * 2**20  # bytes; bigger files are checked by size only on open
CHUNK = 256  # passages per saved embedding chunk: the unit of progress and of resume


def _faiss():
    try:
        import faiss
    except ImportError:
        raise OdqaError(
            "FAISS is not installed; install odqa with the 'cpu' extra (pip install -e '.[cpu]') "
            "or the 'gpu' extra"
        ) from None
    return faiss


def _make_faiss(kind: str, emb: np.ndarray) -> tuple[object, dict]:
    faiss = _faiss()
    n, d = emb.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(d), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        params = {"M": 32, "efConstruction": 80, "efSearch": 128}
    elif kind == "ivf":
        # ~4*sqrt(n) lists, but at least 39 training points per list (FAISS's own floor)
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)
        params = {"nlist": nlist, "nprobe": min(nlist, 16)}
    else:
        raise OdqaError(f"unknown FAISS index type '{kind}'; use one of {list(FAISS_TYPES)}")
    index.add(emb)
    return index, params


def manifest_digest(manifest: dict) -> str:
    """The sha256 of a manifest's content without its own ``manifest_sha256`` field."""
    import hashlib

    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _bm25_corpus(token_lists: list[list[str]]) -> tuple[list[list[int]], dict[str, int]]:
    """Token ids over a sorted vocabulary: bm25s numbers its vocabulary in set order, which
    follows Python's per-process string hashing, so two builds would write different files."""
    vocab = {t: i for i, t in enumerate(sorted({t for tokens in token_lists for t in tokens}))}
    return [[vocab[t] for t in tokens] for tokens in token_lists], vocab


def build_index(
    corpus: str,
    out: str | Path,
    encoder: str = "minilm-l6",
    query_encoder: str | None = None,
    faiss_type: str = "flat",
    bm25: BM25Config = BM25Config(),
    batch_size: int = 16,
    force: bool = False,
    limit: int | None = None,
    progress: bool = True,
    shard: int | None = None,
    shards: int = 1,
) -> Path:
    """Build ``out`` from ``corpus`` (``wiki-vital``, a DPR ``.tsv`` or a ``.jsonl``).

    With ``shard=i, shards=N`` only every N-th embedding chunk (offset i) is encoded into
    the shared ``.NAME.partial`` dir and nothing is finalized, so N processes (or machines
    sharing the directory) can split the slow part; a final call without ``shard`` merges
    the chunks, encodes any still missing, and writes the index. Returns the index dir,
    or the partial dir for a shard run.
    """
    if faiss_type not in FAISS_TYPES:
        raise OdqaError(f"unknown FAISS index type '{faiss_type}'; use one of {list(FAISS_TYPES)}")
    if shards < 1 or (shard is not None and not 0 <= shard < shards):
        raise OdqaError(f"--shard must be in 0..{shards - 1} for --shards {shards}, got {shard}")
    out = Path(out)
    check_replaceable(out, (INDEX_KIND,), "an index")  # --force replaces an odqa index, nothing else
    if out.exists() and any(out.iterdir()) and not force:
        raise OdqaError(f"index '{out}' already exists; pass --force to rebuild it, or choose another --out")
    partial = out.parent / f".{out.name}.partial"
    if not (partial / "build.json").exists():
        check_replaceable(partial, (INDEX_KIND,), "a partial index build")
    # shard runs write disjoint chunk files, each atomically, so only the final build is exclusive
    with OutputLock(out) if shard is None else contextlib.nullcontext():
        return _build(corpus, out, partial, encoder, query_encoder, faiss_type, bm25, batch_size, limit,
                      progress, shard, shards)


def _build(corpus, out: Path, partial: Path, encoder, query_encoder, faiss_type, bm25, batch_size, limit,
           progress, shard, shards) -> Path:
    from odqa.encoders import load_encoder, probe_embedding

    passages = read_corpus(corpus)
    if limit:
        passages = passages[:limit]
    chash = corpus_hash(passages)
    spec = {"corpus_hash": chash, "encoder": encoder, "query_encoder": query_encoder, "faiss": faiss_type,
            "bm25": bm25.__dict__, "count": len(passages)}

    build_file = partial / "build.json"
    if partial.exists():
        try:
            same = json.loads(build_file.read_text()) == spec
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            shutil.rmtree(partial)
    (partial / "emb").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(build_file, json.dumps(spec).encode())
    n_chunks = math.ceil(len(passages) / CHUNK)
    enc = load_encoder(encoder, query_encoder)
    if shard is not None:
        mine = [i for i in range(n_chunks) if i % shards == shard]
        _encode_chunks(enc, passages, partial, mine, batch_size, progress, f"shard {shard}/{shards}")
        return partial

    # passages
    lines = "".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n"
                    for p in passages)
    atomic_write_bytes(partial / "passages.jsonl", lines.encode("utf-8"))

    # BM25 (seconds, so not resumable)
    import bm25s

    if not (partial / "bm25" / "params.index.json").exists():
        tokens = bm25.tokenize([p.retrieval_text() for p in passages])
        retriever = bm25s.BM25(method=bm25.method, k1=bm25.k1, b=bm25.b)
        retriever.index(_bm25_corpus(tokens), show_progress=progress)
        tmp_bm25 = partial / f"bm25.{os.getpid()}.tmp"
        shutil.rmtree(tmp_bm25, ignore_errors=True)
        retriever.save(str(tmp_bm25), show_progress=False)
        os.replace(tmp_bm25, partial / "bm25")

    # dense embeddings, chunk by chunk (resumable; chunks from shard runs are reused)
    _encode_chunks(enc, passages, partial, range(n_chunks), batch_size, progress, "embedding passages")
    emb = np.concatenate([np.load(partial / "emb" / f"{i:05d}.npy") for i in range(n_chunks)])

    faiss = _faiss()
    index, faiss_params = _make_faiss(faiss_type, emb)
    tmp_faiss = partial / f"dense.faiss.{os.getpid()}.tmp"
    faiss.write_index(index, str(tmp_faiss))
    os.replace(tmp_faiss, partial / "dense.faiss")

    shutil.rmtree(partial / "emb")
    build_file.unlink()
    for stale in partial.glob("*.tmp"):  # left by a killed run
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    files = {}
    for f in sorted(partial.rglob("*")):
        if f.is_file():
            rel = f.relative_to(partial).as_posix()
            files[rel] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    manifest = {
        "kind": "odqa-index",
        "odqa_version": __version__,
        "corpus": corpus,
        "corpus_hash": chash,
        "count": len(passages),
        "encoder": encoder,
        "encoder_kind": enc.kind,
        "query_encoder": getattr(enc, "query_name", None),
        "dim": int(emb.shape[1]),
        "normalized": bool(enc.normalize),
        "encoder_probe": [round(float(x), 6) for x in probe_embedding(enc)],
        "faiss": {"type": faiss_type, "metric": "inner_product", **faiss_params},
        "bm25": {**bm25.__dict__, "library": "bm25s", "text": "title\\ntext"},
        "files": files,
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    atomic_write_bytes(partial / "manifest.json", json.dumps(manifest, indent=2).encode())

    if out.exists() and declared_kind(out) == INDEX_KIND:  # --force: swap the old one out, then delete it
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists():  # an empty directory (checked above)
            out.rmdir()
        os.replace(partial, out)
    return out


def _encode_chunks(enc, passages: list[Passage], partial: Path, chunks, batch_size: int, progress: bool,
                   desc: str) -> None:
    """Encode and save each listed chunk that is not saved yet (atomic per chunk)."""
    todo = [i for i in chunks if not (partial / "emb" / f"{i:05d}.npy").exists()]
    size = lambda i: min(CHUNK, len(passages) - i * CHUNK)  # noqa: E731
    done = sum(size(i) for i in chunks if i not in todo)
    bar = tqdm(total=done + sum(size(i) for i in todo), initial=done, desc=desc, unit="psg", disable=not progress)
    for i in todo:
        path = partial / "emb" / f"{i:05d}.npy"
        chunk = passages[i * CHUNK : (i + 1) * CHUNK]
        # one call per chunk: the encoder sorts by length inside it, so batches pad little
        emb = enc.encode_passages([p.title for p in chunk], [p.text for p in chunk], batch_size)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
        bar.update(len(chunk))
    bar.close()


class SearchIndex:
    """An opened index; its BM25 and FAISS parts load lazily, once per process."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._lock = threading.Lock()
        self._passages: list[Passage] | None = None
        self._bm25 = None
        self._faiss = None
        self._rows: dict[str, int] | None = None

    @classmethod
    def open(cls, path: str | Path) -> "SearchIndex":
        path = Path(path)
        if not path.exists():
            raise IndexNotFoundError(f"index directory '{path}' does not exist; build it with: "
                                     f"odqa index build --corpus wiki-vital --out {path}")
        mpath = path / "manifest.json"
        if not path.is_dir() or not mpath.exists():
            # never suggest building into a directory that is not odqa's: a build there would refuse
            raise IndexNotFoundError(
                f"'{path}' is not an odqa index (no manifest.json); point index_dir at an index, or build "
                "one into a new directory: odqa index build --corpus wiki-vital --out indexes/NAME")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            files = manifest["files"]
            if manifest.get("kind") != INDEX_KIND:
                raise KeyError
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise IndexCorruptError(f"index '{path}': manifest.json is unreadable or not an odqa index manifest; "
                                    "point index_dir at an odqa index, or build one into a new directory with "
                                    "`odqa index build --corpus CORPUS --out indexes/NAME`") from None
        fix = f"rebuild with `odqa index build --corpus {manifest.get('corpus', 'CORPUS')} --out {path} --force`"
        if "manifest_sha256" not in manifest:
            raise IndexCorruptError(f"index '{path}': manifest.json carries no checksum (built by an older odqa); "
                                    f"{fix}")
        if manifest_digest(manifest) != manifest["manifest_sha256"]:
            raise IndexCorruptError(f"index '{path}': manifest.json was edited (it does not match its own "
                                    f"checksum); {fix}")
        for rel, info in files.items():
            f = path / rel
            if not f.exists():
                raise IndexCorruptError(f"index '{path}': file {rel} is missing; {fix}")
            if f.stat().st_size != info["bytes"]:
                raise IndexCorruptError(
                    f"index '{path}': file {rel} is {f.stat().st_size} bytes, expected {info['bytes']} "
                    f"(truncated?); {fix}"
                )
            # size is always checked; content hashes for files up to HASH_LIMIT (a psgs_w100-scale
            # index would take minutes to hash on every start)
            if info["bytes"] <= HASH_LIMIT and file_sha256(f) != info["sha256"]:
                raise IndexCorruptError(f"index '{path}': file {rel} does not match its checksum; {fix}")
        return cls(path, manifest)

    @property
    def passages(self) -> list[Passage]:
        with self._lock:
            if self._passages is None:
                with open(self.path / "passages.jsonl", encoding="utf-8") as fh:
                    self._passages = [Passage(**json.loads(line)) for line in fh]
            return self._passages

    def bm25(self):
        with self._lock:
            if self._bm25 is None:
                import bm25s

                self._bm25 = bm25s.BM25.load(str(self.path / "bm25"), show_progress=False)
            return self._bm25

    def bm25_config(self) -> BM25Config:
        keys = BM25Config.__dataclass_fields__
        return BM25Config(**{k: v for k, v in self.manifest["bm25"].items() if k in keys})

    def dense(self):
        with self._lock:
            if self._faiss is None:
                faiss = _faiss()
                index = faiss.read_index(str(self.path / "dense.faiss"))
                params = self.manifest["faiss"]
                if params["type"] == "ivf":
                    index.nprobe = params["nprobe"]
                elif params["type"] == "hnsw":
                    index.hnsw.efSearch = params["efSearch"]
                self._faiss = index
            return self._faiss

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored passage vectors of the passages with these ids, ``[len(ids), dim]`` (read back from
        FAISS, so a re-scorer uses exactly what dense retrieval scored). Unknown ids are refused."""
        if self._rows is None:
            rows = {p.id: i for i, p in enumerate(self.passages)}
            index = self.dense()
            if self.manifest["faiss"]["type"] == "ivf":  # IVF lists keep no row -> vector map until asked
                with self._lock:
                    _faiss().extract_index_ivf(index).make_direct_map()
            self._rows = rows
        unknown = [i for i in ids if i not in self._rows]
        if unknown:
            raise IndexMismatchError(f"passage id '{unknown[0]}' is not in index '{self.path}' ({len(unknown)} of "
                                     f"{len(ids)} unknown); re-rank passages retrieved from this index, or point "
                                     "index_dir at the index they came from")
        if not ids:
            return np.zeros((0, self.manifest["dim"]), dtype=np.float32)
        index = self.dense()
        return np.stack([index.reconstruct(self._rows[i]) for i in ids]).astype(np.float32)

    def check_encoder(self, encoder) -> None:
        """Fail if ``encoder`` embeds differently from the encoder this index was built with."""
        from odqa.encoders import probe_embedding

        built = np.asarray(self.manifest["encoder_probe"], dtype=np.float32)
        now = probe_embedding(encoder)
        same = built.shape == now.shape and float(
            np.dot(built, now) / (np.linalg.norm(built) * np.linalg.norm(now) + 1e-12)
        ) > 0.999
        if not same:
            raise IndexMismatchError(
                f"index '{self.path}' was built with encoder '{self.manifest['encoder']}' "
                f"(dim {self.manifest['dim']}), but the pipeline uses '{encoder.name}' (dim {encoder.dim}); "
                f"set the retriever's encoder to '{self.manifest['encoder']}', or rebuild the index with "
                f"`odqa index build --encoder {encoder.name} ...`"
            )


_OPEN: dict[tuple[str, float], SearchIndex] = {}
_OPEN_LOCK = threading.Lock()


def open_index(path: str | Path) -> SearchIndex:
    """Open an index once per process (retrievers in one pipeline share it)."""
    p = Path(path).resolve()
    try:
        key = (str(p), (p / "manifest.json").stat().st_mtime)
    except OSError:
        return SearchIndex.open(path)  # raises the right error
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = SearchIndex.open(p)
        return _OPEN[key]
