"""Compare odqa's BM25 (bm25s) with rank-bm25 and Haystack's InMemoryBM25Retriever.

What is measured
----------------
Corpus: ``wiki-vital`` (10,033 passages), each indexed as ``Passage.retrieval_text()``
(title, newline, text). Questions: ``fanoutqa-wiki:dev`` and ``fanoutqa-wiki:train``, items
deduplicated by (id, question) within a split (``--no-dedup`` to keep all); ``test`` is never
loaded. Every system retrieves the top 20 for each unique question text, one query at a time,
in a single thread.

Systems (k1 and b are the chosen ``BM25Config`` unless stated):

- ``bm25s``: ``bm25s.BM25(method, k1, b)`` on ``BM25Config.tokenize`` tokens, ``retrieve(k=20,
  n_threads=1)``: exactly what odqa's BM25 retriever does;
- ``bm25s-robertson``: a control, bm25s with ``method="robertson"`` (the original Okapi idf
  ``log((N-df+.5)/(df+.5))``, negatives clipped to 0), the scoring family rank-bm25 and
  Haystack's BM25Okapi use (they floor negative idf at 0.25 x mean idf instead);
- ``rank-bm25``: ``rank_bm25.BM25Okapi`` (k1, b, epsilon=0.25) on the *same* tokens;
  ``get_scores`` then a full argsort, as ``get_top_n`` does;
- ``haystack``: ``InMemoryDocumentStore(bm25_algorithm=...)`` + ``InMemoryBM25Retriever(top_k=20)``,
  in three settings: (a) Haystack's defaults (BM25L, k1=1.5, b=0.75, delta=0.5, its regex
  tokenizer, no stemming, no stopwords); (b) BM25Okapi with the chosen k1 and b and Haystack's
  tokenizer; (c) as (b) but tokenized by ``BM25Config.tokenize`` (the store's
  ``_tokenize_bm25`` overridden), which separates tokenizer from scoring.

Reported per system: index time (tokenizing the corpus plus building the index; for Haystack,
``write_documents``), median and p95 query latency (tokenize + retrieve top 20), answer@20
(``odqa.metrics.has_answer`` on title + text of a top-20 passage, DPR convention), evidence@20
(the evidence page's title in the top 20), and the mean overlap of each system's top 20 with
bm25s's.

Run from the repository root:  python bench/bm25_peers.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network here; never try to send

import numpy as np
from tqdm.auto import tqdm

from odqa.data.corpus import read_corpus
from odqa.index import BM25Config
from odqa.metrics import has_answer
from odqa.data.questions import dedup as dedup_questions
from odqa.data.questions import load_questions

K = 20


def load_split(name: str, dedup: bool):
    qs = load_questions(f"fanoutqa-wiki:{name}")
    n_raw = len(qs)
    if dedup:
        qs = dedup_questions(qs)
    return name, qs, n_raw


def p95(xs):
    return float(np.percentile(np.asarray(xs), 95))


# --- systems: each returns (index_seconds, search(query) -> list of passage indices) -------------

def system_bm25s(texts, cfg: BM25Config):
    import bm25s

    t0 = time.perf_counter()
    retriever = bm25s.BM25(method=cfg.method, k1=cfg.k1, b=cfg.b)
    retriever.index(cfg.tokenize(texts), show_progress=False)
    index_s = time.perf_counter() - t0

    def search(q):
        ids, _ = retriever.retrieve(cfg.tokenize([q]), k=K, show_progress=False, n_threads=1)
        return [int(i) for i in ids[0]]

    return index_s, search


def system_rank_bm25(texts, cfg: BM25Config):
    from rank_bm25 import BM25Okapi

    t0 = time.perf_counter()
    bm25 = BM25Okapi(cfg.tokenize(texts), k1=cfg.k1, b=cfg.b, epsilon=0.25)
    index_s = time.perf_counter() - t0

    def search(q):
        scores = bm25.get_scores(cfg.tokenize([q])[0])
        return [int(i) for i in np.argsort(scores)[::-1][:K]]

    return index_s, search


def system_haystack(texts, algorithm: str, params: dict, cfg: BM25Config | None):
    """``cfg`` None: Haystack's own tokenizer; otherwise ``cfg.tokenize`` replaces it."""
    from haystack import Document
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    class OdqaTokensStore(InMemoryDocumentStore):
        def _tokenize_bm25(self, text: str) -> list[str]:
            return cfg.tokenize([text])[0]

    store_cls = InMemoryDocumentStore if cfg is None else OdqaTokensStore
    docs = [Document(content=t, meta={"pid": i}) for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    store = store_cls(bm25_algorithm=algorithm, bm25_parameters=params or None, shared=False,
                      return_embedding=False)
    store.write_documents(docs)
    index_s = time.perf_counter() - t0
    retriever = InMemoryBM25Retriever(document_store=store, top_k=K)

    def search(q):
        return [d.meta["pid"] for d in retriever.run(query=q)["documents"]]

    return index_s, search


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lucene", help="bm25s method of the chosen config")
    ap.add_argument("--k1", type=float, default=3.0)
    ap.add_argument("--b", type=float, default=0.3)
    ap.add_argument("--stemmer", default="english", help="PyStemmer language, or 'none'")
    ap.add_argument("--stopwords", default="none", help="bm25s stopword list ('en'), or 'none'")
    ap.add_argument("--systems", nargs="+", default=["bm25s", "bm25s-robertson", "rank-bm25", "haystack-default",
                                                      "haystack-okapi", "haystack-okapi-odqa-tokens"],
                    help="which systems to run")
    ap.add_argument("--no-dedup", action="store_true", help="score every item, not unique (id, question) pairs")
    ap.add_argument("--out", default="bench/results/bm25_peers.md", help="markdown report path")
    args = ap.parse_args(argv)
    none = lambda s: None if s in (None, "", "none", "None") else s  # noqa: E731
    cfg = BM25Config(method=args.method, k1=args.k1, b=args.b, stemmer=none(args.stemmer),
                     stopwords=none(args.stopwords))

    t_start = time.perf_counter()
    passages = read_corpus("wiki-vital")
    texts = [p.retrieval_text() for p in passages]
    titles = [p.title for p in passages]
    splits = [load_split("dev", not args.no_dedup), load_split("train", not args.no_dedup)]
    queries = sorted({q.question for _, qs, _ in splits for q in qs})

    okapi = {"k1": cfg.k1, "b": cfg.b, "epsilon": 0.25}
    makers = {
        "bm25s": ("bm25s", f"{cfg.method}, k1={cfg.k1}, b={cfg.b}", "odqa (BM25Config)",
                  lambda: system_bm25s(texts, cfg)),
        "bm25s-robertson": ("bm25s (Okapi idf, control)", f"robertson, k1={cfg.k1}, b={cfg.b}", "odqa (BM25Config)",
                            lambda: system_bm25s(texts, replace(cfg, method="robertson"))),
        "rank-bm25": ("rank-bm25 BM25Okapi", f"k1={cfg.k1}, b={cfg.b}, epsilon=0.25", "odqa (BM25Config)",
                      lambda: system_rank_bm25(texts, cfg)),
        "haystack-default": ("Haystack InMemoryBM25Retriever", "BM25L defaults: k1=1.5, b=0.75, delta=0.5",
                             "Haystack regex", lambda: system_haystack(texts, "BM25L", {}, None)),
        "haystack-okapi": ("Haystack InMemoryBM25Retriever", f"BM25Okapi, k1={cfg.k1}, b={cfg.b}, epsilon=0.25",
                           "Haystack regex", lambda: system_haystack(texts, "BM25Okapi", okapi, None)),
        "haystack-okapi-odqa-tokens": ("Haystack InMemoryBM25Retriever",
                                       f"BM25Okapi, k1={cfg.k1}, b={cfg.b}, epsilon=0.25",
                                       "odqa (BM25Config)", lambda: system_haystack(texts, "BM25Okapi", okapi, cfg)),
    }
    unknown = [s for s in args.systems if s not in makers]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {list(makers)}")

    answer_cache: dict[tuple, bool] = {}

    def hit(q, pid):
        key = (q.question, tuple(q.answers), pid)
        if key not in answer_cache:
            answer_cache[key] = has_answer(texts[pid], q.answers)
        return answer_cache[key]

    rows, ref = [], None
    for name in args.systems:
        label, setting, tokenizer, make = makers[name]
        index_s, search = make()
        search(queries[0])  # warm-up, not timed
        ranked, lat = {}, []
        for q in tqdm(queries, desc=f"{name} queries", unit="q"):
            t0 = time.perf_counter()
            ranked[q] = search(q)
            lat.append((time.perf_counter() - t0) * 1000)
        if name == "bm25s":
            ref = ranked
        row = {"name": name, "label": label, "setting": setting, "tokenizer": tokenizer, "index_s": index_s,
               "p50": statistics.median(lat), "p95": p95(lat)}
        for sname, qs, _ in splits:
            row[f"{sname}_ans"] = 100 * float(np.mean([any(hit(q, pid) for pid in ranked[q.question]) for q in qs]))
            row[f"{sname}_ev"] = 100 * float(np.mean([any(titles[pid] == q.evidence_title for pid in ranked[q.question])
                                                      for q in qs]))
        row["overlap"] = (100 * float(np.mean([len(set(ranked[q]) & set(ref[q])) / K for q in queries]))
                          if ref is not None else float("nan"))
        rows.append(row)
        tqdm.write(f"{name}: index {index_s:.2f} s, query p50 {row['p50']:.2f} ms, p95 {row['p95']:.2f} ms, "
                   f"dev ans@20 {row['dev_ans']:.1f} ev@20 {row['dev_ev']:.1f}, "
                   f"train ans@20 {row['train_ans']:.1f} ev@20 {row['train_ev']:.1f}")
    elapsed = time.perf_counter() - t_start

    header = ("| system | scoring | tokenizer | index s | query ms p50 | query ms p95 | dev ans@20 | dev ev@20 "
              "| train ans@20 | train ev@20 | top-20 overlap with bm25s % |\n"
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    table = [header] + [
        f"| {r['label']} | {r['setting']} | {r['tokenizer']} | {r['index_s']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} "
        f"| {r['dev_ans']:.1f} | {r['dev_ev']:.1f} | {r['train_ans']:.1f} | {r['train_ev']:.1f} | {r['overlap']:.1f} |"
        for r in rows
    ]
    cmd = " ".join(["python", "bench/bm25_peers.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# BM25 peers on fanoutqa-wiki: bm25s vs rank-bm25 vs Haystack\n",
        f"Command: `{cmd}` (from the repository root)  ",
        f"Runtime: {elapsed:.0f} s; bm25s {version('bm25s')}, rank-bm25 {version('rank-bm25')}, "
        f"haystack-ai {version('haystack-ai')}, Python {platform.python_version()}, one query at a time, "
        "single thread, on a shared 2-core machine.\n",
        f"Corpus: wiki-vital, {len(passages):,} passages (title + newline + text). Questions: "
        + "; ".join(f"{n}: {len(qs)}" + (f" ({raw} items, deduplicated by (id, question))" if raw != len(qs) else "")
                    for n, qs, raw in splits)
        + f"; {len(queries)} unique query texts timed. Test split never loaded.\n",
        f"Chosen config (odqa tokens): `BM25Config(method={cfg.method!r}, k1={cfg.k1}, b={cfg.b}, "
        f"stemmer={cfg.stemmer!r}, stopwords={cfg.stopwords!r})`.\n",
        "Index s: tokenizing the corpus plus building the index (Haystack: `write_documents`, which tokenizes). "
        "Query ms: tokenize + top-20 retrieval, per question. ans@20: a top-20 passage contains an answer "
        "(`odqa.metrics.has_answer`, DPR convention); ev@20: the evidence page is in the top 20. "
        "Overlap: mean share of each question's top 20 that bm25s also returns.\n",
        *table,
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(table))
    print(f"\nwrote {out}; {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
