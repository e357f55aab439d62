"""Build and open odqa indexes: a bm25s BM25 index plus a FAISS inner-product index.

Layout of ``indexes/NAME/``::

    manifest.json    corpus hash, encoder, dim, count, BM25 and FAISS settings, odqa version,
                     and the size and sha256 of every file below (checked on open)
    passages.jsonl   the passages, in index order
    bm25/            bm25s files
    dense.faiss      FAISS index (flat, ivf, ivfpq, hnsw or hnsw-sq8), inner product as in DPR

A build writes into ``.NAME.partial`` beside the target and renames it into place
at the end, so a killed build never leaves a half-written index. Embeddings are
saved there in chunks, so restarting the same build resumes where it stopped; with
``--engine ray`` a Ray actor pool embeds the chunks and this process saves them, the same files.
A build holds ``.NAME.lock`` (one builder at a time), replaces only an odqa index
(``--force``), and is byte-reproducible: two builds of one corpus give identical files.
``manifest.json`` carries its own checksum (``manifest_sha256``), checked on open.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from odqa import __version__
from odqa.configs import BM25Config
from odqa.data.corpus import Passage, corpus_hash, read_corpus
from odqa.errors import IndexCorruptError, IndexMismatchError, IndexNotFoundError, OdqaError, PipelineConfigError
from odqa.runs import INDEX_KIND, OutputLock, atomic_write_bytes, check_replaceable, declared_kind, file_sha256

if TYPE_CHECKING:
    from odqa.ray_engine import RayEngine

logger = logging.getLogger(__name__)
FAISS_TYPES = ("flat", "ivf", "ivfpq", "hnsw", "hnsw-sq8")
IVF_TYPES = ("ivf", "ivfpq")  # searched with nprobe: how many of the nlist lists to scan
HNSW_TYPES = ("hnsw", "hnsw-sq8")  # searched with efSearch: the size of the graph search's candidate list
TRAIN_CAP = 100_000  # most vectors an IVF or SQ8 index trains on (a seeded sample beyond that)
TRAIN_SEED = 0
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


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers for ``dim``-d vectors: the most that leave each one at least 2 dimensions
    (384 -> 192, 768 -> 384: 1/8 of a float32 vector's bytes at 8 bits each). Chosen on dev
    (``bench/faiss_types.py --sweep``) by one rule for every type: the cheapest setting that keeps
    95% of flat's top 100 (d/4 codes kept at most 87% at any nprobe)."""
    return max(m for m in range(1, max(1, dim // 2) + 1) if dim % m == 0)


def check_pq_m(faiss_type: str, pq_m: int | None, dim: int | None = None) -> None:
    """Refuse a ``pq_m`` (the CLI's ``--pq-m``) that the index type does not take, that is not a
    positive integer, or (given the encoder's ``dim``) that does not divide the dimension."""
    if pq_m is None:
        return
    if faiss_type != "ivfpq":
        raise OdqaError(f"--pq-m {pq_m} applies only to --faiss ivfpq, not --faiss {faiss_type}; drop --pq-m, "
                        "or pass --faiss ivfpq")
    if isinstance(pq_m, bool) or not isinstance(pq_m, int) or pq_m < 1:
        raise OdqaError(f"--pq-m {pq_m!r} must be a positive integer (the number of PQ sub-quantizers, which "
                        "must divide the encoder's dimension), e.g. --pq-m 192 for a 384-d encoder")
    if dim is not None and dim % pq_m:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        raise OdqaError(f"--pq-m {pq_m} does not divide the encoder's dimension {dim} (each sub-quantizer codes "
                        f"an equal slice of the vector); use one of {divisors}, or leave it out for "
                        f"{default_pq_m(dim)}")


def _train_sample(emb: np.ndarray) -> np.ndarray:
    """The vectors an index trains on: all of them up to :data:`TRAIN_CAP`, else a seeded sample
    (kept in corpus order), so a build stays byte-reproducible."""
    if len(emb) <= TRAIN_CAP:
        return emb
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(len(emb), TRAIN_CAP, replace=False))
    return emb[rows]


def make_faiss(kind: str, emb: np.ndarray, pq_m: int | None = None) -> tuple[object, dict]:
    """A FAISS inner-product index of type ``kind`` (one of :data:`FAISS_TYPES`) holding ``emb``,
    and the parameters the manifest records for it (search defaults included).

    - ``flat``: exact search over float32 vectors.
    - ``ivf`` / ``ivfpq``: ~4*sqrt(n) k-means lists (at least 39 training points each, FAISS's own
      floor); ``ivfpq`` stores each vector as ``pq_m`` codes of ``pq_nbits`` bits (product
      quantization of the residual to its list centroid; 8 bits once there are 256 training vectors).
    - ``hnsw`` / ``hnsw-sq8``: an HNSW graph (M=32) over float32 vectors, or over vectors
      scalar-quantized to 8 bits per dimension (``IndexHNSWSQ``, a quarter of the bytes).

    Trained types train on :func:`_train_sample` (at most :data:`TRAIN_CAP` vectors).
    """
    faiss = _faiss()
    n, d = emb.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index, params = faiss.IndexFlatIP(d), {}
    elif kind in HNSW_TYPES:
        if kind == "hnsw":
            index, params = faiss.IndexHNSWFlat(d, 32, ip), {}
        else:
            train = _train_sample(emb)
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 32, ip)
            index.train(train)  # the per-dimension range the 8-bit codes span
            params = {"sq": "8bit", "train_size": len(train), "train_seed": TRAIN_SEED}
        index.hnsw.efConstruction = 80
        params = {"M": 32, "efConstruction": 80, "efSearch": 128, **params}
    elif kind in IVF_TYPES:
        train = _train_sample(emb)
        nlist = max(1, min(int(4 * math.sqrt(n)), len(train) // 39))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
            params = {"nlist": nlist, "nprobe": min(nlist, 64)}  # dev: keeps 95% of flat's top 100
        else:
            m = pq_m or default_pq_m(d)
            nbits = min(8, len(train).bit_length() - 1)  # FAISS needs a training vector per centroid
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, ip)
            index.pq.cp.min_points_per_centroid = 1  # a small corpus: no warning per sub-quantizer
            # PQ loses neighbours inside each list; scanning more lists wins them back (dev: 128 lists
            # keep 95.7% of flat's top 100 at d/2 codes, 32 lists 88%)
            params = {"nlist": nlist, "nprobe": min(nlist, 128), "pq_m": m, "pq_nbits": nbits}
        index.train(train)
        params.update(train_size=len(train), train_seed=TRAIN_SEED)
    else:
        raise OdqaError(f"unknown FAISS index type '{kind}'; use one of {list(FAISS_TYPES)}")
    index.add(emb)
    return index, params


def set_search_defaults(index, params: dict):
    """Set a FAISS index's ``nprobe`` (IVF types) or ``efSearch`` (HNSW types) from its manifest
    ``faiss`` entry (``{"type": ..., **params}``); returns the index. They are set after reading, not
    stored in the file, so the file stays what :func:`make_faiss` wrote."""
    if params["type"] in IVF_TYPES:
        index.nprobe = params["nprobe"]
    elif params["type"] in HNSW_TYPES:
        index.hnsw.efSearch = params["efSearch"]
    return index


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
    engine: RayEngine | None = None,
    pq_m: int | None = None,
) -> Path:
    """Build ``out`` from ``corpus`` (``wiki-vital``, a DPR ``.tsv`` or a ``.jsonl``); returns ``out``.

    ``engine`` (an :class:`odqa.ray_engine.RayEngine`) embeds the chunks on a Ray actor pool
    instead of in this process; the chunk files, and so the index, are the same either way.
    ``pq_m``: PQ sub-quantizers of an ``ivfpq`` index (default :func:`default_pq_m`).
    """
    if faiss_type not in FAISS_TYPES:
        raise OdqaError(f"unknown FAISS index type '{faiss_type}'; use one of {list(FAISS_TYPES)}")
    check_pq_m(faiss_type, pq_m)
    out = Path(out)
    check_replaceable(out, (INDEX_KIND,), "an index")  # --force replaces an odqa index, nothing else
    if out.exists() and any(out.iterdir()) and not force:
        raise OdqaError(f"index '{out}' already exists; pass --force to rebuild it, or choose another --out")
    partial = out.parent / f".{out.name}.partial"
    if not (partial / "build.json").exists():
        check_replaceable(partial, (INDEX_KIND,), "a partial index build")
    with OutputLock(out):
        return _build(corpus, out, partial, encoder, query_encoder, faiss_type, bm25, batch_size, limit,
                      progress, engine, pq_m)


def _build(corpus, out: Path, partial: Path, encoder, query_encoder, faiss_type, bm25, batch_size, limit,
           progress, engine, pq_m) -> Path:
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
    check_pq_m(faiss_type, pq_m, enc.dim)  # before the slow part

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

    # dense embeddings, chunk by chunk (resumable: chunks already saved are kept)
    _encode_chunks(enc, passages, partial, n_chunks, batch_size, progress, engine)
    emb = np.concatenate([np.load(partial / "emb" / f"{i:05d}.npy") for i in range(n_chunks)])

    faiss = _faiss()
    index, faiss_params = make_faiss(faiss_type, emb, pq_m)
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


def _encode_chunks(enc, passages: list[Passage], partial: Path, n_chunks: int, batch_size: int, progress: bool,
                   engine) -> None:
    """Encode and save each chunk that is not saved yet (atomic per chunk), here or on ``engine``'s actors."""
    todo = [i for i in range(n_chunks) if not (partial / "emb" / f"{i:05d}.npy").exists()]
    chunk = lambda i: passages[i * CHUNK : (i + 1) * CHUNK]  # noqa: E731
    bar = tqdm(total=len(passages), initial=len(passages) - sum(len(chunk(i)) for i in todo),
               desc="embedding passages", unit="psg", disable=not progress)
    if engine is None:
        # one call per chunk: the encoder sorts by length inside it, so batches pad little
        done = ((i, enc.encode_passages([p.title for p in chunk(i)], [p.text for p in chunk(i)], batch_size))
                for i in todo)
    else:
        rows = [{"chunk": i, "passages": json.dumps([[p.title, p.text] for p in chunk(i)], ensure_ascii=False)}
                for i in todo]
        args = (enc.name, getattr(enc, "query_name", None), batch_size, engine.device)
        done = ((int(r["chunk"]), r["emb"]) for r in engine.map(ChunkEncoder, args, rows))
    for i, emb in done:
        _save_chunk(partial, i, emb)
        bar.update(len(chunk(i)))
    bar.close()


def _save_chunk(partial: Path, i: int, emb: np.ndarray) -> None:
    path = partial / "emb" / f"{i:05d}.npy"
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(emb, dtype=np.float32))
    os.replace(tmp, path)


class ChunkEncoder:
    """One Ray encoder actor's work: loads the encoder once, then embeds one chunk per call,
    exactly as a local build embeds it (one ``encode_passages`` call per chunk)."""

    def __init__(self, encoder: str, query_encoder: str | None, batch_size: int, device: str):
        from odqa.encoders import load_encoder

        self.enc = load_encoder(encoder, query_encoder, device)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        pairs = json.loads(str(batch["passages"][0]))
        emb = self.enc.encode_passages([t for t, _ in pairs], [x for _, x in pairs], self.batch_size)
        return {"chunk": batch["chunk"], "emb": emb[None]}


class SearchIndex:
    """An opened index; its BM25 and FAISS parts load lazily, once per process."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._lock = threading.Lock()
        self._passages: list[Passage] | None = None
        self._bm25 = None
        self._faiss: dict[bool, object] = {}  # mmap -> the FAISS index read that way
        self._rows: dict[str, int] | None = None
        self._vector_index = None  # the FAISS index vectors() reconstructs from

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

    def dense(self, mmap: bool = False):
        """The FAISS index, read once per process (per ``mmap``), with the manifest's ``nprobe`` /
        ``efSearch`` as its search defaults (:meth:`search_params` overrides them per search).

        ``mmap=True`` maps the file instead of reading it (``faiss.IO_FLAG_MMAP_IFC``): the stored
        vectors, codes, inverted lists and graph stay in the page cache, loaded as searches touch
        them and shared by every process that maps the same file. In faiss 1.15.1 this works for
        every type in :data:`FAISS_TYPES` (``faiss.IO_FLAG_MMAP`` maps only IVF inverted lists);
        where FAISS refuses, the index is read normally and a warning logged. A mapped index is
        read-only: never ``add`` to it.
        """
        with self._lock:
            if mmap not in self._faiss:
                self._faiss[mmap] = self._read_faiss(mmap)
            return self._faiss[mmap]

    def _read_faiss(self, mmap: bool):
        faiss = _faiss()
        path = str(self.path / "dense.faiss")
        index = None
        if mmap:
            try:
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
            except (AttributeError, RuntimeError) as e:  # an older FAISS, or a type it cannot map
                logger.warning("index '%s': FAISS cannot memory-map dense.faiss (%s); reading it into memory",
                               self.path, str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        if index is None:
            index = faiss.read_index(path)
        return set_search_defaults(index, self.manifest["faiss"])

    def search_params(self, nprobe: int | None = None, ef_search: int | None = None):
        """FAISS search parameters for ``index.search(q, k, params=...)`` that override the manifest's
        ``nprobe`` (IVF types: lists scanned, capped at ``nlist``) or ``efSearch`` (HNSW types: the
        graph search's candidate list), or ``None`` to search with the manifest's own.

        A knob the index's type does not have, or a value that is not a positive integer, raises
        :class:`~odqa.errors.PipelineConfigError` naming the knob, the index's type and the fix.
        """
        kind = self.manifest["faiss"]["type"]
        knobs = (("nprobe", nprobe, IVF_TYPES, "nprobe"), ("ef_search", ef_search, HNSW_TYPES, "efSearch"))
        for name, value, types, field in knobs:
            if value is None:
                continue
            if kind not in types:
                other = next((n for n, _, t, _ in knobs if kind in t), None)
                fix = f"set {other} instead" if other else "a flat index compares the query with every vector"
                raise PipelineConfigError(
                    f"{name}={value!r} is set, but index '{self.path}' has FAISS type '{kind}', which has no "
                    f"{name} (only {' and '.join(types)} indexes have); remove {name} from the retriever ({fix})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                default = self.manifest["faiss"][field]
                raise PipelineConfigError(
                    f"{name} must be a positive integer, got {value!r} (index '{self.path}', FAISS type '{kind}', "
                    f"default {name} {default}); set e.g. {name}: {2 * default}, or remove it to use the index's "
                    "default")
        faiss = _faiss()
        if nprobe is not None:
            return faiss.SearchParametersIVF(nprobe=nprobe)
        if ef_search is not None:
            return faiss.SearchParametersHNSW(efSearch=ef_search)
        return None

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored passage vectors of the passages with these ids, ``[len(ids), dim]`` (read back from
        FAISS, so a re-scorer uses exactly what dense retrieval scored). Unknown ids are refused.

        For the compressed types (``ivfpq``, ``hnsw-sq8``) these are the decoded codes, approximations of
        the encoder's vectors: ``ivfpq`` keeps a PQ code of each vector's residual to its list centroid,
        ``hnsw-sq8`` 8 bits per dimension. Search scores against the same approximations,
        so re-scoring with them repeats dense retrieval's scores. The FAISS index already loaded
        (mapped or not) is used; an IVF type gets its row -> list map built once, on the first call.
        """
        if self._rows is None:
            rows = {p.id: i for i, p in enumerate(self.passages)}
            loaded = [self._faiss[m] for m in (False, True) if m in self._faiss]
            index = loaded[0] if loaded else self.dense()  # no second copy of the index
            if self.manifest["faiss"]["type"] in IVF_TYPES:  # IVF lists keep no row -> vector map until asked
                with self._lock:
                    _faiss().extract_index_ivf(index).make_direct_map()
            self._vector_index = index
            self._rows = rows
        unknown = [i for i in ids if i not in self._rows]
        if unknown:
            raise IndexMismatchError(f"passage id '{unknown[0]}' is not in index '{self.path}' ({len(unknown)} of "
                                     f"{len(ids)} unknown); re-rank passages retrieved from this index, or point "
                                     "index_dir at the index they came from")
        if not ids:
            return np.zeros((0, self.manifest["dim"]), dtype=np.float32)
        index = self._vector_index
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
