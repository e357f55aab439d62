"""The 21M-passage plan, measured: index-side costs on a synthetic corpus, encoder speed on real passages.

What is measured (every part at one thread: ``OMP_NUM_THREADS=1``, ``faiss.omp_set_num_threads(1)``,
``torch.set_num_threads(1)``)
-------------------------------------------------------------------------------------------------
Corpus: ``--passages`` synthetic passages (default 1,000,000) of 100 words each, drawn with a fixed
seed from a Zipf-like vocabulary of 3M syllable words (exponent 1.1 up to rank 1,000, 1.6 beyond,
so rare words keep arriving as in Heaps' law), 30% of each passage's words from one of 2,000
topics of 60 words (so passages repeat words and cluster, as text does). These constants were set
so that 10k synthetic passages tokenize like ``wiki-vital``'s 10k real ones (unique terms per
passage, head coverage, vocabulary growth); the report prints both.

Dense vectors come from a tiny random encoder: a seeded embedding bag (65,536 hashed rows of a
normal random table, each word weighted by its self-information -log p) projected to 384 or 768
dimensions and L2-normalised. Queries: ``--queries`` (200) bags of 12 words sampled from random
passages, encoded the same way (BM25 gets the same words as text).

Parts (``--only``, in this order; each is cached in ``OUT.json`` and skipped on a rerun):

- ``passages``: ``passages.jsonl`` as ``odqa index build`` writes it; its size, and the RSS of
  loading it as :class:`odqa.index.SearchIndex` does (a list of ``Passage``).
- ``bm25``: ``BM25Config`` tokenization and a bm25s index (odqa's settings); build time, build peak
  RSS, size on disk, RSS when loaded in memory and with ``mmap=True`` (after loading and after the
  queries), median latency of one query (tokenize + top 100).
- ``encoder``: passages/s of the real ``minilm-l6`` encoder on 512 ``wiki-vital`` passages,
  encoded as the index build does (chunks of 256, batch 16), torch threads 1.
- ``TYPE-DIM`` for each type in ``odqa.index.FAISS_TYPES`` at 384 and 768 dimensions: build time of
  ``odqa.index.make_faiss`` (training included), build peak RSS, file size and the part of it that
  does not grow with the vectors (the file after ``reset()``), RSS added by ``faiss.read_index``
  normally and memory-mapped (``IO_FLAG_MMAP_IFC``, else ``IO_FLAG_MMAP``; reported when refused),
  median latency of one query for top 100 at the search settings ``make_faiss`` returns, and
  recall@100 against exact search (top 100 of a brute-force inner product), and the share of the
  exact top 10 among the 100 found. For IVF types, adding 100k vectors to the trained index is timed
  too, which splits the build into training (a capped sample: constant in n) and adding (linear).
- ``settings-DIM``: each approximate index built above at other search settings (``nprobe`` 16-128,
  ``efSearch`` 128-512): median latency and recall, the speed/recall trade.

``--subset PART=N`` runs one part on the first N passages only (e.g. ``hnsw-768=200000``).
Loading and querying run in fresh processes, so the RSS figures hold only what they add.

    OMP_NUM_THREADS=1 python bench/scale.py --passages 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)
from odqa.runs import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
TARGET = 21_015_324  # DPR's Wikipedia, psgs_w100.tsv
WORDS = 100  # per passage, as psgs_w100
QUERY_WORDS = 12
K = 100
CHUNK = 50_000  # passages per generation chunk
# the vocabulary (see the module docstring; changing any of these changes the corpus)
VOCAB, HEAD, A_HEAD, A_TAIL = 3_000_000, 1_000, 1.1, 1.6
TOPICS, TOPIC_WORDS, TOPIC_SHARE, TOPIC_RANKS = 2_000, 60, 0.3, (200, 20_000)
BUCKETS = 65_536
DIMS = (384, 768)
GEN = "v1"  # bump when the corpus or encoder changes, so cached parts are redone


# --- the synthetic corpus and encoder -------------------------------------------------------------
def word_probs() -> np.ndarray:
    r = np.arange(1, VOCAB + 1, dtype=np.float64)
    p = np.where(r <= HEAD, r ** -A_HEAD, HEAD ** (A_TAIL - A_HEAD) * r ** -A_TAIL)
    return p / p.sum()


def words() -> np.ndarray:
    """Rank -> word: rank+100 in base 100 over consonant-vowel syllables (frequent words are shorter)."""
    syl = np.array([c + v for c in "bcdfghjklmnprstvwxyz" for v in "aeiou"], dtype=object)
    out, r = np.full(VOCAB, "", dtype=object), np.arange(VOCAB) + 100
    while r.any():
        out = np.where(r > 0, syl[r % 100] + out, out)
        r //= 100
    return out


def generate_tokens(n: int, seed: int, path: Path) -> None:
    """Word ranks ``[n, WORDS]`` (int32) and topics ``[n]``, chunk by chunk (each chunk has its own seed)."""
    cdf = np.cumsum(word_probs())
    topic_words = np.random.default_rng([seed, 1]).integers(*TOPIC_RANKS, size=(TOPICS, TOPIC_WORDS))
    r = np.arange(1, TOPIC_WORDS + 1, dtype=np.float64)
    topic_cdf = np.cumsum(1 / r / (1 / r).sum())
    tmp = path.with_name("tokens.tmp.npy")
    toks = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(n, WORDS))
    topics = np.zeros(n, dtype=np.int32)
    for c in tqdm(range(math.ceil(n / CHUNK)), desc="synthetic corpus", unit="chunk"):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        rng = np.random.default_rng([seed, 2, c])
        t = rng.integers(0, TOPICS, hi - lo)
        glob = np.minimum(np.searchsorted(cdf, rng.random((hi - lo, WORDS))), VOCAB - 1)
        top = topic_words[t[:, None], np.searchsorted(topic_cdf, rng.random((hi - lo, WORDS)))]
        toks[lo:hi] = np.where(rng.random((hi - lo, WORDS)) < TOPIC_SHARE, top, glob)
        topics[lo:hi] = t
    toks.flush()
    del toks
    np.save(path.with_name("topics.npy"), topics)
    os.replace(tmp, path)


def query_tokens(tokens: np.ndarray, q: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 3])
    src = np.sort(rng.choice(len(tokens), q, replace=False))
    pos = rng.random((q, WORDS)).argsort(1)[:, :QUERY_WORDS]
    return np.asarray(tokens[src])[np.arange(q)[:, None], pos]


def encode(toks: np.ndarray, dim: int, seed: int, weight: np.ndarray) -> np.ndarray:
    """The random embedding bag: sum of -log p weighted hashed rows, L2-normalised."""
    from scipy.sparse import csr_matrix

    table = np.random.default_rng([seed, 4, dim]).standard_normal((BUCKETS, dim), dtype=np.float32)
    rows = np.repeat(np.arange(len(toks)), toks.shape[1])
    bag = csr_matrix((weight[toks.ravel()], (rows, toks.ravel() % BUCKETS)), shape=(len(toks), BUCKETS))
    emb = np.asarray(bag @ table, dtype=np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def texts(tokens: np.ndarray, topics: np.ndarray, vocab: np.ndarray, lo: int, hi: int) -> tuple[list, list]:
    """Titles (two topic words) and texts of passages ``lo..hi``."""
    toks = np.asarray(tokens[lo:hi])
    titles = [f"{vocab[TOPIC_RANKS[0] + t]} {vocab[TOPIC_RANKS[0] + TOPICS + t]}" for t in topics[lo:hi]]
    return titles, [" ".join(row) for row in vocab[toks]]


class Work:
    """The work directory's files, made once (the corpus, vectors, queries, exact top 100)."""

    def __init__(self, root: Path, n: int, q: int, seed: int):
        self.root, self.n, self.q, self.seed = root, n, q, seed
        root.mkdir(parents=True, exist_ok=True)

    def tokens(self) -> np.ndarray:
        path = self.root / "tokens.npy"
        if not path.exists():
            generate_tokens(self.n, self.seed, path)
        return np.load(path, mmap_mode="r")

    def topics(self) -> np.ndarray:
        self.tokens()
        return np.load(self.root / "topics.npy")

    def qtokens(self) -> np.ndarray:
        path = self.root / "qtokens.npy"
        if not path.exists():
            np.save(path, query_tokens(self.tokens(), self.q, self.seed))
        return np.load(path)

    def weight(self) -> np.ndarray:
        return (-np.log(word_probs())).astype(np.float32)

    def vectors(self, dim: int) -> np.ndarray:
        path = self.root / f"emb-{dim}.npy"
        if not path.exists():
            tokens, weight = self.tokens(), self.weight()
            tmp = path.with_name(f"emb-{dim}.tmp.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.n, dim))
            for lo in tqdm(range(0, self.n, CHUNK), desc=f"random encoder, {dim}-d", unit="chunk"):
                out[lo:lo + CHUNK] = encode(np.asarray(tokens[lo:lo + CHUNK]), dim, self.seed, weight)
            out.flush()
            del out
            os.replace(tmp, path)
        return np.load(path, mmap_mode="r")

    def qvectors(self, dim: int) -> np.ndarray:
        return encode(self.qtokens(), dim, self.seed, self.weight())

    def exact(self, dim: int, n: int) -> np.ndarray:
        """Exact top-K rows of the first ``n`` vectors for each query (brute-force inner product)."""
        path = self.root / f"exact-{dim}-{n}.npy"
        if not path.exists():
            emb, qv = self.vectors(dim), self.qvectors(dim)
            best_s = np.full((len(qv), 0), -np.inf, dtype=np.float32)
            best_i = np.zeros((len(qv), 0), dtype=np.int64)
            for lo in tqdm(range(0, n, CHUNK), desc=f"exact top {K}, {dim}-d", unit="chunk"):
                hi = min(n, lo + CHUNK)
                s = qv @ np.asarray(emb[lo:hi]).T
                s_all, i_all = np.hstack([best_s, s]), np.hstack([best_i, np.arange(lo, hi)[None].repeat(len(qv), 0)])
                top = np.argpartition(-s_all, K, axis=1)[:, :K] if s_all.shape[1] > K else np.argsort(-s_all, 1)
                best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
            order = np.argsort(-best_s, 1)  # best first, so the exact top 10 are the first ten
            np.save(path, np.take_along_axis(best_i, order, 1))
        return np.load(path)


# --- measuring ------------------------------------------------------------------------------------
def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def settled_rss() -> int:
    """RSS once freed memory is handed back (else what a probe loads reuses it and goes uncounted)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def dir_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def one_thread() -> None:
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


def child(args, *extra: str) -> dict:
    """Run this script in a fresh process (``--_part`` / ``--_probe``) and return what it wrote."""
    out = Path(args.work) / f"result.{os.getpid()}.{time.monotonic_ns()}.json"
    cmd = [sys.executable, __file__, "--passages", str(args.passages), "--queries", str(args.queries),
           "--seed", str(args.seed), "--work", str(args.work), "--_result", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def latencies(search, n: int) -> dict:
    for i in range(min(5, n)):  # warm
        search(i)
    times = []
    for i in tqdm(range(n), desc="queries", unit="q", leave=False):
        t0 = time.perf_counter()
        search(i)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * float(np.percentile(times, 95))}


def part_passages(args, work: Work, n: int) -> dict:
    tokens, topics, vocab = work.tokens(), work.topics(), words()
    path = work.root / f"passages-{n}" / "passages.jsonl"
    path.parent.mkdir(exist_ok=True)
    with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as fh:
        for lo in tqdm(range(0, n, CHUNK), desc="passages.jsonl", unit="chunk"):
            titles, bodies = texts(tokens, topics, vocab, lo, min(n, lo + CHUNK))
            fh.write("".join(json.dumps({"id": str(lo + i), "title": t, "text": x}, ensure_ascii=False) + "\n"
                             for i, (t, x) in enumerate(zip(titles, bodies))))
    os.replace(path.with_suffix(".tmp"), path)
    probe = child(args, "--_probe", "passages", "--path", str(path.parent))
    return {"n": n, "bytes": path.stat().st_size, **probe}


def probe_passages(path: Path) -> dict:
    from odqa.index import SearchIndex

    before = settled_rss()
    t0 = time.perf_counter()
    n = len(SearchIndex(path, {}).passages)
    return {"load_s": time.perf_counter() - t0, "rss_added": rss() - before, "count": n}


def wiki_vital_stats() -> dict:
    """The same statistics on the real bundled corpus (the synthetic one was set to match them)."""
    from odqa.configs import BM25Config
    from odqa.data.corpus import read_corpus

    return token_stats(BM25Config().tokenize([p.retrieval_text() for p in read_corpus("wiki-vital")]))


def token_stats(tok: list[list[str]]) -> dict:
    import collections

    counts = collections.Counter(t for ts in tok for t in ts)
    freq = np.sort(np.fromiter(counts.values(), dtype=np.int64))[::-1]
    return {"passages": len(tok), "tokens_per_passage": float(np.mean([len(t) for t in tok])),
            "unique_per_passage": float(np.mean([len(set(t)) for t in tok])), "vocab": len(counts),
            "head_1000": float(freq[:1000].sum() / freq.sum())}


def part_bm25(args, work: Work, n: int) -> dict:
    import bm25s

    from odqa.configs import BM25Config

    cfg = BM25Config()
    tokens, topics, vocab = work.tokens(), work.topics(), words()
    base = rss()
    ids, token_id, t_tok = [], {}, 0.0
    for lo in tqdm(range(0, n, CHUNK), desc="bm25 tokenize", unit="chunk"):
        titles, bodies = texts(tokens, topics, vocab, lo, min(n, lo + CHUNK))
        t0 = time.perf_counter()
        tok = cfg.tokenize([f"{t}\n{x}" for t, x in zip(titles, bodies)])  # Passage.retrieval_text()
        # ids over one growing vocabulary (insertion order is the corpus order, so runs agree)
        ids.extend([token_id.setdefault(w, len(token_id)) for w in ts] for ts in tok)
        t_tok += time.perf_counter() - t0
        if lo == 0:
            synthetic = token_stats(tok[:10_000])
    t0 = time.perf_counter()
    retriever = bm25s.BM25(method=cfg.method, k1=cfg.k1, b=cfg.b)
    retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=token_id), show_progress=True)
    t_index = time.perf_counter() - t0
    nnz = int(retriever.scores["data"].shape[0])
    path = work.root / f"bm25-{n}"
    shutil.rmtree(path, ignore_errors=True)
    retriever.save(str(path), show_progress=False)
    del retriever, ids
    peak = peak_rss()
    files = {f.name: f.stat().st_size for f in path.iterdir()}
    probes = {mode: child(args, "--_probe", "bm25", "--path", str(path), "--mmap", mode) for mode in ("0", "1")}
    return {"n": n, "tokenize_s": t_tok, "index_s": t_index, "peak_rss": peak, "base_rss": base, "nnz": nnz,
            "vocab": len(token_id), "bytes": dir_bytes(path), "files": files, "load": probes["0"],
            "mmap": probes["1"], "synthetic_10k": synthetic, "wiki_vital": wiki_vital_stats()}


def probe_bm25(work: Work, path: Path, mmap: bool) -> dict:
    import bm25s

    from odqa.configs import BM25Config

    cfg, vocab = BM25Config(), words()
    queries = [" ".join(vocab[q]) for q in work.qtokens()]
    del vocab
    before = settled_rss()
    t0 = time.perf_counter()
    retriever = bm25s.BM25.load(str(path), mmap=mmap, show_progress=False)
    load_s, loaded = time.perf_counter() - t0, rss() - before

    def search(i):  # as odqa's BM25Retriever does
        retriever.retrieve(cfg.tokenize([queries[i]]), k=K, show_progress=False, n_threads=1)

    lat = latencies(search, len(queries))
    return {"load_s": load_s, "rss_added": loaded, "rss_after_queries": rss() - before, **lat}


def part_encoder(args, work: Work, n: int) -> dict:
    import torch

    from odqa.data.corpus import read_corpus
    from odqa.encoders import load_encoder

    torch.set_num_threads(1)
    enc = load_encoder("minilm-l6")
    passages = read_corpus("wiki-vital")[: args.encoder_passages]
    titles, bodies = [p.title for p in passages], [p.text for p in passages]
    enc.encode_passages(titles[:16], bodies[:16], 16)  # warm
    t0 = time.perf_counter()
    for lo in tqdm(range(0, len(passages), 256), desc="minilm-l6", unit="chunk"):  # odqa.index.CHUNK
        enc.encode_passages(titles[lo:lo + 256], bodies[lo:lo + 256], 16)
    seconds = time.perf_counter() - t0
    tok = enc.model.tokenizer([f"{t}\n{x}" for t, x in zip(titles, bodies)], truncation=True,
                              max_length=enc.model.max_seq_length)["input_ids"]
    return {"n": len(passages), "seconds": seconds, "per_s": len(passages) / seconds,
            "threads": torch.get_num_threads(), "tokens_per_passage": float(np.mean([len(t) for t in tok])),
            "words_per_passage": float(np.mean([len(x.split()) for x in bodies])),
            "max_seq_length": int(enc.model.max_seq_length)}


def part_faiss(args, work: Work, n: int, kind: str, dim: int) -> dict:
    import faiss

    from odqa import index as odqa_index

    make_faiss = getattr(odqa_index, "make_faiss", None) or odqa_index._make_faiss  # renamed while this was written
    one_thread()
    emb_file = work.vectors(dim)
    exact = work.exact(dim, n)
    base = rss()
    emb = np.ascontiguousarray(emb_file[:n])
    t0 = time.perf_counter()
    index, params = make_faiss(kind, emb)
    build_s = time.perf_counter() - t0
    peak = peak_rss()
    del emb
    path = work.root / f"{kind}-{dim}-{n}.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    index.reset()  # what stays without the vectors: quantizer, codebooks, headers
    fixed = len(faiss.serialize_index(index))
    add_s = None
    if kind != "flat" and not kind.startswith("hnsw"):  # trained: time adding alone, to split training off
        sub = np.ascontiguousarray(emb_file[: min(n, 100_000)])
        t0 = time.perf_counter()
        index.add(sub)
        add_s = (time.perf_counter() - t0) / len(sub) * n
        del sub
    del index
    probes = {mode: child(args, "--_probe", "faiss", "--path", str(path), "--dim", str(dim), "--mmap", mode,
                          "--params", json.dumps(params)) for mode in ("0", "1")}
    found = np.load(probes["0"].pop("ids_file"))
    probes["1"].pop("ids_file", None)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), exact.tolist())]))
    recall10 = float(np.mean([len(set(a) & set(b[:10])) / 10 for a, b in zip(found.tolist(), exact.tolist())]))
    return {"n": n, "kind": kind, "dim": dim, "params": params, "build_s": build_s, "add_s": add_s, "peak_rss": peak,
            "base_rss": base, "vectors_bytes": n * dim * 4, "bytes": size, "fixed_bytes": fixed,
            "per_vector_bytes": (size - fixed) / n, "load": probes["0"], "mmap": probes["1"],
            f"recall@{K}": recall, "recall10@100": recall10}


SETTINGS = {"nprobe": (16, 32, 64, 128), "efSearch": (128, 256, 512)}  # the search settings swept


def part_settings(args, work: Work, n: int, dim: int) -> dict:
    """Recall and latency of each approximate index already built (by its ``TYPE-DIM`` part, on ``n``
    passages) at other search settings than ``make_faiss``'s defaults: the speed/recall trade."""
    paths = sorted(work.root.glob(f"*-{dim}-{n}.faiss"))
    if not paths:
        raise SystemExit(f"no {dim}-d index on {n:,} passages in {work.root}; measure its TYPE-{dim} parts first "
                         f"(e.g. --only ivfpq-{dim},settings-{dim} --redo ivfpq-{dim})")
    exact, rows = work.exact(dim, n).tolist(), []
    for path in paths:
        kind = path.name[: -len(f"-{dim}-{n}.faiss")]
        key = "nprobe" if kind.startswith("ivf") else "efSearch" if kind.startswith("hnsw") else None
        for value in SETTINGS.get(key, ()):
            probe = child(args, "--_probe", "faiss", "--path", str(path), "--dim", str(dim), "--mmap", "0",
                          "--params", json.dumps({key: value}))
            found = np.load(probe["ids_file"]).tolist()
            per_query = [len(set(a) & set(b)) / K for a, b in zip(found, exact)]
            rows.append({"kind": kind, "setting": f"{key}={value}", "median_ms": probe["median_ms"],
                         f"recall@{K}": float(np.mean(per_query)),
                         "missed": float(np.mean(np.asarray(per_query) < 0.1)),  # graph search lost its way
                         "recall10@100": float(np.mean([len(set(a) & set(b[:10])) / 10
                                                        for a, b in zip(found, exact)]))})
    return {"n": n, "dim": dim, "rows": rows}


def probe_faiss(work: Work, path: Path, dim: int, mmap: bool, params: dict) -> dict:
    import faiss

    one_thread()
    qv = work.qvectors(dim)
    before = settled_rss()
    t0 = time.perf_counter()
    flag = "none"
    if mmap:
        index = None
        for name in ("IO_FLAG_MMAP_IFC", "IO_FLAG_MMAP"):
            try:
                index, flag = faiss.read_index(str(path), getattr(faiss, name)), name
                break
            except (RuntimeError, AttributeError) as e:
                flag = f"refused: {str(e).splitlines()[-1][:120]}"
        if index is None:
            return {"flag": flag}
    else:
        index = faiss.read_index(str(path))
    load_s, loaded = time.perf_counter() - t0, rss() - before
    space = faiss.ParameterSpace()  # the search settings make_faiss returned (nprobe, efSearch)
    for key in ("nprobe", "efSearch"):
        if key in params:
            space.set_index_parameter(index, key, params[key])
    found = np.zeros((len(qv), K), dtype=np.int64)

    def search(i):
        found[i] = index.search(qv[i:i + 1], K)[1][0]

    lat = latencies(search, len(qv))
    ids_file = path.with_name(f"{path.stem}.found.npy")
    np.save(ids_file, found)
    return {"flag": flag, "load_s": load_s, "rss_added": loaded, "rss_after_queries": rss() - before,
            "ids_file": str(ids_file), **lat}


# --- the report -----------------------------------------------------------------------------------
def size(x: float) -> str:
    return f"{x / 2**30:,.1f} GB" if x >= 2**30 else f"{x / 2**20:,.0f} MB"


def nlist_at(params: dict, n: int, target: int) -> float:
    """IVF lists at ``target`` by odqa's rule in ``make_faiss`` (4 sqrt(n), but at most the training
    sample over 39), checked against the measured count; else the measured count scaled by sqrt(n)."""
    from odqa import index as odqa_index

    cap = getattr(odqa_index, "TRAIN_CAP", None) or 10**12
    rule = lambda m: max(1, min(int(4 * math.sqrt(m)), min(m, cap) // 39))  # noqa: E731
    return rule(target) if rule(n) == params["nlist"] else params["nlist"] * math.sqrt(target / n)


def faiss_plan(r: dict, target: int) -> dict:
    """Linear in the vectors (measured bytes per vector) plus the fixed part (IVF's grows as nlist)."""
    n, p = r["n"], r["params"]
    grow = nlist_at(p, n, target) / p["nlist"] if "nlist" in p else 1.0
    fixed = r["fixed_bytes"] * grow
    disk = r["per_vector_bytes"] * target + fixed
    ram = (r["load"]["rss_added"] - r["fixed_bytes"]) / n * target + fixed
    lat = r["load"]["median_ms"]
    if r["kind"] == "flat":
        lat_t, rule = lat * target / n, "x n"
    elif "nlist" in p:
        lists = nlist_at(p, n, target)
        lat_t = lat * (target / lists) / (n / p["nlist"])
        rule = f"x (n/nlist): nprobe lists of n/nlist vectors; nlist {p['nlist']:,} -> {lists:,.0f}"
    else:
        lat_t, rule = lat * math.log(target) / math.log(n), "x log n"
    return {"disk": disk, "ram": ram, "latency_ms": lat_t, "rule": rule}


def report(args, cache: dict) -> list[str]:
    parts = cache["parts"]
    get = lambda name: next((v for k, v in parts.items() if k.split("@")[0] == name), None)  # noqa: E731
    t = args.target
    seen = [v["load_at_start"] for v in parts.values() if "load_at_start" in v]
    loads = f"{min(seen):.1f}-{max(seen):.1f}" if seen else "?"
    lines = [
        f"# Scale: index-side costs on {args.passages:,} synthetic passages, extrapolated to {t:,}", "",
        f"Command: `{command()}`  ",
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), every part at one thread; "
        f"1-minute load average {loads} at the parts' starts (other jobs shared the cores), so times are upper "
        f"bounds. Corpus seed {args.seed}; {args.queries} queries of {QUERY_WORDS} words. **Measured** columns are "
        f"from this run; **at {t / 1e6:.1f}M** columns are extrapolated (rules in each table).", "",
    ]
    bm = get("bm25")
    if bm:
        s, w = bm["synthetic_10k"], bm["wiki_vital"]
        lines += [
            "## The synthetic corpus against the real one (BM25Config tokens, first 10k passages)", "",
            "| corpus | tokens / passage | unique terms / passage | vocabulary at 10k | top-1000 terms' share |",
            "|---|---|---|---|---|",
            f"| synthetic ({WORDS} words + 2-word title) | {s['tokens_per_passage']:.1f} | "
            f"{s['unique_per_passage']:.1f} | {s['vocab']:,} | {s['head_1000']:.0%} |",
            f"| wiki-vital (real, 80 words + title) | {w['tokens_per_passage']:.1f} | {w['unique_per_passage']:.1f} | "
            f"{w['vocab']:,} | {w['head_1000']:.0%} |", "",
        ]
    sweeps = [v for k, v in sorted(parts.items()) if k.startswith("settings-")]
    dense = sorted((v for k, v in parts.items() if "kind" in v), key=lambda r: (r["dim"], order(r["kind"])))
    if dense:
        lines += [
            "## Dense indexes (FAISS, inner product, `odqa.index.make_faiss`)", "",
            "Build: `make_faiss` (training included). Size: the `.faiss` file; *fixed* is what the file keeps "
            "after `reset()` (quantizer, codebooks). RAM: RSS added by `read_index` in a fresh process; mmap: "
            "with the flag shown, after loading / after the queries. Latency: one query, top 100, one thread. "
            "Recall@100: share of the exact top 100 found; then the share of the exact top 10 among the 100 found.", "",
            "| type, dim | n | search settings | build | build peak RSS | file (fixed) | bytes / vector | RAM "
            "| mmap RAM (load / queries) | latency median (p95) | recall@100 | exact top 10 in top 100 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in dense:
            p = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
            m = r["mmap"]
            mm = f"{size(m['rss_added'])} / {size(m['rss_after_queries'])} ({m['flag']})" if "rss_added" in m \
                else m["flag"]
            lines.append(
                f"| {r['kind']}, {r['dim']} | {r['n']:,} | {p} | {r['build_s']:,.0f} s | {size(r['peak_rss'])} | "
                f"{size(r['bytes'])} ({size(r['fixed_bytes'])}) | {r['per_vector_bytes']:.1f} | "
                f"{size(r['load']['rss_added'])} | {mm} | {r['load']['median_ms']:.2f} ms "
                f"({r['load']['p95_ms']:.2f}) | {r[f'recall@{K}']:.3f} | {r.get('recall10@100', float('nan')):.3f} |")
        lines += [
            "", f"At {t:,} passages (extrapolated: bytes per vector x n + the fixed part, IVF's fixed part "
            "scaled to the nlist `make_faiss` would choose there; latency and build time by the rules shown):", "",
            "| type, dim | disk | RAM | latency | latency rule | build time (rule) |", "|---|---|---|---|---|---|",
        ]
        for r in dense:
            plan = faiss_plan(r, t)
            if r["kind"].startswith("hnsw"):
                build, rule = r["build_s"] * t / r["n"] * math.log(t) / math.log(r["n"]), "n log n"
            elif "nlist" in r["params"] and r.get("add_s"):
                lists = nlist_at(r["params"], r["n"], t)
                train = max(0.0, r["build_s"] - r["add_s"])
                build = train * lists / r["params"]["nlist"] + r["add_s"] * t / r["n"] * lists / r["params"]["nlist"]
                rule = (f"training {train:,.0f} s x nlist (sample capped) + adding {r['add_s']:,.0f} s x n x nlist")
            else:
                build, rule = r["build_s"] * t / r["n"], "n"
            lines.append(f"| {r['kind']}, {r['dim']} | {size(plan['disk'])} | {size(plan['ram'])} | "
                         f"{plan['latency_ms']:,.1f} ms | {plan['rule']} | {build / 3600:,.1f} h ({rule}) |")
        lines.append("")
    for sw in sweeps:
        lines += [
            f"Other search settings ({sw['dim']}-d, {sw['n']:,} passages, the indexes above; part "
            f"`settings-{sw['dim']}`):", "",
            "| type | setting | latency median | recall@100 | exact top 10 in top 100 | queries with recall@100 "
            "under 0.1 |", "|---|---|---|---|---|---|",
            *(f"| {r['kind']} | {r['setting']} | {r['median_ms']:.2f} ms | {r[f'recall@{K}']:.3f} | "
              f"{r['recall10@100']:.3f} | {r.get('missed', float('nan')):.1%} |" for r in sw["rows"]), "",
        ]
    if bm:
        per = lambda x: x / bm["n"] * t  # noqa: E731
        lines += [
            "## BM25 (bm25s, odqa's BM25Config)", "",
            f"Build on {bm['n']:,} passages: tokenize {bm['tokenize_s']:,.0f} s + index {bm['index_s']:,.0f} s; "
            f"build process peak RSS {size(bm['peak_rss'])}; {bm['nnz']:,} postings, vocabulary {bm['vocab']:,}. "
            f"At {t / 1e6:.1f}M: linear in passages (the vocabulary grows slower, so an upper bound).", "",
            f"| quantity | measured, {bm['n']:,} | at {t / 1e6:.1f}M |", "|---|---|---|",
            f"| build time (tokenize + index) | {bm['tokenize_s'] + bm['index_s']:,.0f} s | "
            f"{per(bm['tokenize_s'] + bm['index_s']) / 3600:,.1f} h |",
            f"| build peak RSS | {size(bm['peak_rss'])} | {size(per(bm['peak_rss'] - bm['base_rss']))} |",
            f"| size on disk | {size(bm['bytes'])} | {size(per(bm['bytes']))} |",
            f"| RAM, loaded in memory | {size(bm['load']['rss_added'])} | {size(per(bm['load']['rss_added']))} |",
            f"| RAM, `mmap=True`, after load | {size(bm['mmap']['rss_added'])} | "
            f"{size(per(bm['mmap']['rss_added']))} |",
            f"| RAM, `mmap=True`, after {args.queries} queries | {size(bm['mmap']['rss_after_queries'])} | "
            f"{size(per(bm['mmap']['rss_after_queries']))} |",
            f"| query latency, median (p95), in memory | {bm['load']['median_ms']:.1f} ms ({bm['load']['p95_ms']:.1f}) "
            f"| {per(bm['load']['median_ms']):,.0f} ms (x n: scores every posting of the query terms) |",
            f"| query latency, median, mmap | {bm['mmap']['median_ms']:.1f} ms | — |", "",
        ]
    ps = get("passages")
    if ps:
        lines += [
            "## Passage store (`passages.jsonl`, loaded as `SearchIndex.passages`)", "",
            f"| quantity | measured, {ps['n']:,} | at {t / 1e6:.1f}M (x n) |", "|---|---|---|",
            f"| file | {size(ps['bytes'])} | {size(ps['bytes'] / ps['n'] * t)} |",
            f"| RAM (list of Passage) | {size(ps['rss_added'])} | {size(ps['rss_added'] / ps['n'] * t)} |",
            f"| load time | {ps['load_s']:.1f} s | {ps['load_s'] / ps['n'] * t / 60:,.0f} min |", "",
        ]
    en = get("encoder")
    if en:
        lines += [
            "## Encoder (real `minilm-l6`, wiki-vital passages, torch threads 1)", "",
            f"{en['n']} passages ({en['words_per_passage']:.0f} words, {en['tokens_per_passage']:.0f} wordpieces "
            f"each on average, max {en['max_seq_length']}) in {en['seconds']:.1f} s: **{en['per_s']:.1f} passages/s "
            f"per core**; {t:,} passages would take {t / en['per_s'] / 3600:,.0f} core-hours at that rate.", "",
        ]
    return lines


FAISS_ORDER = ["flat", "ivf", "ivfpq", "hnsw", "hnsw-sq8"]


def order(kind: str) -> int:
    return FAISS_ORDER.index(kind) if kind in FAISS_ORDER else len(FAISS_ORDER)


def all_parts() -> list[str]:
    from odqa.index import FAISS_TYPES

    kinds = [k for k in FAISS_ORDER if k in FAISS_TYPES] + [k for k in FAISS_TYPES if k not in FAISS_ORDER]
    return ["passages", "bm25", "encoder", *(f"{k}-{d}" for d in DIMS for k in kinds),
            *(f"settings-{d}" for d in DIMS)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passages", type=int, default=1_000_000, help="synthetic passages")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated parts (default: all); see the docstring")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out")
    ap.add_argument("--subset", action="append", default=[], metavar="PART=N",
                    help="run PART on the first N passages (repeatable)")
    ap.add_argument("--redo", default="", help="comma-separated parts to measure again despite the cache")
    ap.add_argument("--encoder-passages", type=int, default=512)
    ap.add_argument("--target", type=int, default=TARGET, help="passages to extrapolate to")
    ap.add_argument("--work", default=None, help="scratch dir (default indexes/.scale-N, git-ignored)")
    ap.add_argument("--out", default=None, help="report (default bench/results/scale.md; cache beside it as .json)")
    ap.add_argument("--_part", help=argparse.SUPPRESS)
    ap.add_argument("--_probe", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mmap", default="0", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work or str(ROOT / f"indexes/.scale-{args.passages}")
    work = Work(Path(args.work), args.passages, args.queries, args.seed)

    if args._part or args._probe:  # a child: measure one thing, write it to --_result
        one_thread()
        if args._probe == "passages":
            result = probe_passages(Path(args.path))
        elif args._probe == "bm25":
            result = probe_bm25(work, Path(args.path), args.mmap == "1")
        elif args._probe == "faiss":
            result = probe_faiss(work, Path(args.path), args.dim, args.mmap == "1", json.loads(args.params))
        elif args._part.startswith("settings-"):
            result = part_settings(args, work, args.n, int(args._part.split("-")[1]))
        elif args._part in ("passages", "bm25", "encoder"):
            result = globals()[f"part_{args._part}"](args, work, args.n)
        else:
            kind, dim = args._part.rsplit("-", 1)
            result = part_faiss(args, work, args.n, kind, int(dim))
        atomic_write_bytes(Path(args._result), json.dumps(result).encode())
        return 0

    out = Path(args.out or ROOT / "bench/results/scale.md")
    cache_file = out.with_suffix(".json")
    spec = {"passages": args.passages, "seed": args.seed, "queries": args.queries, "gen": GEN}
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    if cache.get("spec") != spec:
        cache = {"spec": spec, "parts": {}}
    known = all_parts()
    subset = dict(s.split("=") for s in args.subset)
    chosen = [p for p in (args.only.split(",") if args.only else known) if p]
    bad = [p for p in chosen + list(subset) + [p for p in args.skip.split(",") if p] if p not in known]
    if bad:
        ap.error(f"unknown part(s) {bad}; the parts here are: {', '.join(known)}")
    redo = set(args.redo.split(","))
    for part in [p for p in chosen if p not in args.skip.split(",")]:
        n = args.encoder_passages if part == "encoder" else int(subset.get(part, args.passages))
        key = f"{part}@{n}"
        if key in cache["parts"] and part not in redo:
            print(f"[scale] {key}: cached", flush=True)
            continue
        for stale in [k for k in cache["parts"] if k.split("@")[0] == part]:
            del cache["parts"][stale]
        print(f"[scale] {key}: measuring", flush=True)
        t0, load = time.perf_counter(), os.getloadavg()[0]
        try:
            result = child(args, "--_part", part, "--n", str(n))
        except subprocess.CalledProcessError as e:  # one failed part does not stop the others
            print(f"[scale] {key}: failed ({e}); see the output above", flush=True)
            continue
        cache["parts"][key] = {**result, "wall_s": time.perf_counter() - t0, "load_at_start": load}
        atomic_write_bytes(cache_file, json.dumps(cache, indent=1).encode())
        publish(report(args, cache), out)
    return publish(report(args, cache), out)


if __name__ == "__main__":
    raise SystemExit(main())
