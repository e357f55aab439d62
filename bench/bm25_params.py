"""Choose BM25's scoring method, k1, b and tokenizer on the bundled benchmark.

What is measured
----------------
Corpus: ``wiki-vital`` (10,033 Wikipedia lead paragraphs); each passage is indexed as
``Passage.retrieval_text()`` (title, newline, text), exactly as ``odqa.index.build_index`` does.
Tokenization is ``odqa.index.BM25Config.tokenize`` (``bm25s.tokenize`` with an optional
stopword list and an optional PyStemmer stemmer), for the corpus and for every query.

For each configuration an in-memory ``bm25s.BM25(method, k1, b)`` index is built and every
question is run through it one at a time (``retrieve(..., k=100, n_threads=1)``), and we report

- answer-in-top-k, k = 1/5/20/100: ``odqa.metrics.has_answer(passage.retrieval_text(), q.answers)``
  holds for at least one of the top-k passages (DPR convention);
- evidence@20: a passage whose title equals ``q.evidence_title`` is in the top 20;
- index time (bm25s ``index`` on pre-tokenized passages; corpus tokenization is cached per
  tokenizer and reported separately);
- query time: median wall time per question of tokenize + retrieve(k=100), single thread,
  and of the retrieve call alone.

Questions: ``fanoutqa-wiki:dev`` is the tuning split; ``fanoutqa-wiki:train`` is reported as a
second check; ``test`` is never loaded. By default, items are deduplicated by (id, question)
within a split, as DESIGN.md asks (dev: 88 items -> 84 unique; train: 131 -> 129); pass
``--no-dedup`` to score every item.

Search (default, ``--grid staged``):
  1. tokenizer: stemmer {english, none} x stopwords {en, none} with lucene, k1=1.2, b=0.75;
  2. method {lucene, robertson, atire, bm25l, bm25+} x k1 {0.6, 0.9, 1.2, 1.5, 2.0}
     x b {0.4, 0.6, 0.75, 0.9} (change with --methods/--k1/--b) with the best tokenizer of step 1;
  3. cross-check: the best (method, k1, b) of step 2 with the other three tokenizers.
``--grid full`` runs the whole cross product (400 configurations) instead.
Ranking: dev evidence@20, then dev answer@20 (then dev answer@5, @1, @100 to break ties).

Run from the repository root:  python bench/bm25_params.py
"""

from __future__ import annotations

import argparse
import itertools
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import numpy as np
from tqdm.auto import tqdm

from odqa.data.corpus import read_corpus
from odqa.index import BM25Config
from odqa.metrics import has_answer
from odqa.data.questions import dedup as dedup_questions
from odqa.data.questions import load_questions

KS = (1, 5, 20, 100)
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
K1S = (0.6, 0.9, 1.2, 1.5, 2.0)
BS = (0.4, 0.6, 0.75, 0.9)
TOKENIZERS = (("english", "en"), ("english", None), (None, "en"), (None, None))
CAPITAL = re.compile(r"\bcapital\b", re.IGNORECASE)


@dataclass
class Split:
    name: str
    items: list  # Question objects scored (deduplicated unless --no-dedup)
    n_raw: int


@dataclass
class Result:
    cfg: BM25Config
    stage: str
    index_s: float
    query_ms: list[float]  # tokenize + retrieve
    retrieve_ms: list[float]  # retrieve only
    # per split: answer-in-top-k (%) for KS, evidence@20 (%), answer@20 without "capital" items (%)
    metrics: dict = field(default_factory=dict)

    @property
    def key(self):
        d = self.metrics["dev"]
        return (d["ev20"], d["ans"][20], d["ans"][5], d["ans"][1], d["ans"][100])


def cfg_label(cfg: BM25Config) -> str:
    return f"{cfg.method} k1={cfg.k1} b={cfg.b} stem={cfg.stemmer or 'none'} stop={cfg.stopwords or 'none'}"


def load_split(name: str, dedup: bool) -> Split:
    qs = load_questions(f"fanoutqa-wiki:{name}")
    if dedup:
        out = dedup_questions(qs)
        return Split(name, out, len(qs))
    return Split(name, qs, len(qs))


class Evaluator:
    def __init__(self, passages, splits: list[Split]):
        self.passages = passages
        self.texts = [p.retrieval_text() for p in passages]
        self.titles = [p.title for p in passages]
        self.splits = splits
        self.queries = sorted({q.question for s in splits for q in s.items})
        self._tok_cache: dict[tuple, list[list[str]]] = {}
        self.tokenize_s: dict[tuple, float] = {}
        self._hit_cache: dict[tuple[str, tuple[str, ...], int], bool] = {}

    def corpus_tokens(self, cfg: BM25Config) -> list[list[str]]:
        key = (cfg.stemmer, cfg.stopwords)
        if key not in self._tok_cache:
            t0 = time.perf_counter()
            self._tok_cache[key] = cfg.tokenize(self.texts)
            self.tokenize_s[key] = time.perf_counter() - t0
        return self._tok_cache[key]

    def has_answer(self, q, pid: int) -> bool:
        key = (q.question, tuple(q.answers), pid)
        hit = self._hit_cache.get(key)
        if hit is None:
            hit = self._hit_cache[key] = has_answer(self.texts[pid], q.answers)
        return hit

    def run(self, cfg: BM25Config, stage: str, k_max: int = 100) -> Result:
        tokens = self.corpus_tokens(cfg)
        t0 = time.perf_counter()
        retriever = bm25s.BM25(method=cfg.method, k1=cfg.k1, b=cfg.b)
        retriever.index(tokens, show_progress=False)
        index_s = time.perf_counter() - t0

        ranked: dict[str, list[int]] = {}
        lat, lat_ret = [], []
        for text in self.queries:
            t0 = time.perf_counter()
            qtok = cfg.tokenize([text])
            t1 = time.perf_counter()
            ids, _ = retriever.retrieve(qtok, k=k_max, show_progress=False, n_threads=1)
            t2 = time.perf_counter()
            lat.append((t2 - t0) * 1000)
            lat_ret.append((t2 - t1) * 1000)
            ranked[text] = [int(i) for i in ids[0]]

        res = Result(cfg, stage, index_s, lat, lat_ret)
        for split in self.splits:
            ans_first, ev_first, capital = [], [], []
            for q in split.items:
                top = ranked[q.question]
                ans_first.append(next((r for r, pid in enumerate(top) if self.has_answer(q, pid)), k_max))
                ev_first.append(next((r for r, pid in enumerate(top) if self.titles[pid] == q.evidence_title), k_max))
                capital.append(bool(CAPITAL.search(q.question)))
            ans_first, ev_first, capital = map(np.asarray, (ans_first, ev_first, capital))
            res.metrics[split.name] = {
                "ans": {k: 100 * float(np.mean(ans_first < k)) for k in KS},
                "ev20": 100 * float(np.mean(ev_first < 20)),
                "ans20_nocap": 100 * float(np.mean(ans_first[~capital] < 20)) if (~capital).any() else float("nan"),
                "n": len(split.items),
                "n_nocap": int((~capital).sum()),
            }
        return res


def fmt_row(rank, r: Result) -> str:
    d, t = r.metrics["dev"], r.metrics["train"]
    cells = [
        str(rank), r.cfg.method, f"{r.cfg.k1}", f"{r.cfg.b}", r.cfg.stemmer or "none", r.cfg.stopwords or "none",
        f"{d['ev20']:.1f}", " / ".join(f"{d['ans'][k]:.1f}" for k in KS), f"{d['ans20_nocap']:.1f}",
        f"{t['ev20']:.1f}", f"{t['ans'][20]:.1f}",
        f"{r.index_s:.2f}", f"{statistics.median(r.query_ms):.2f}",
        f"{statistics.median(r.retrieve_ms):.2f}", r.stage,
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| # | method | k1 | b | stemmer | stopwords | dev ev@20 | dev ans@1/5/20/100 | dev ans@20 no-capital "
    "| train ev@20 | train ans@20 | index s | query ms p50 | retrieve ms p50 | stage |\n"
    "| ---: | --- | ---: | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=("staged", "full"), default="staged",
                    help="staged: tokenizer first, then method x k1 x b (default); full: whole cross product")
    ap.add_argument("--no-dedup", action="store_true", help="score every item, not unique (id, question) pairs")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="bm25s methods to sweep")
    ap.add_argument("--k1", nargs="+", type=float, default=list(K1S), help="k1 values to sweep")
    ap.add_argument("--b", nargs="+", type=float, default=list(BS), help="b values to sweep")
    ap.add_argument("--out", default="bench/results/bm25_params.md", help="markdown report path")
    ap.add_argument("--top", type=int, default=0, help="rows of the sorted table to print (0 = all)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    passages = read_corpus("wiki-vital")
    splits = [load_split("dev", not args.no_dedup), load_split("train", not args.no_dedup)]
    ev = Evaluator(passages, splits)

    def cfg(method="lucene", k1=1.2, b=0.75, stemmer="english", stopwords="en"):
        return BM25Config(method=method, k1=k1, b=b, stemmer=stemmer, stopwords=stopwords)

    results: dict[BM25Config, Result] = {}
    sweep = list(itertools.product(args.methods, args.k1, args.b))
    if args.grid == "full":
        total = len(sweep) * len(TOKENIZERS)
    else:  # an upper bound: a configuration already run is not run again
        total = len(TOKENIZERS) + len(sweep) + len(TOKENIZERS) - 1
    bar = tqdm(total=total, desc="BM25 configurations", unit="cfg")

    def run(c: BM25Config, stage: str) -> Result:
        if c not in results:
            bar.set_postfix_str(cfg_label(c))
            results[c] = ev.run(c, stage)
            bar.update(1)
        return results[c]

    if args.grid == "full":
        for (stem, stop), (m, k1, b) in itertools.product(TOKENIZERS, sweep):
            run(cfg(m, k1, b, stem, stop), "full")
    else:
        tok_res = [run(cfg(stemmer=s, stopwords=w), "1 tokenizer") for s, w in TOKENIZERS]
        best_tok = max(tok_res, key=lambda r: r.key).cfg
        for m, k1, b in sweep:
            run(cfg(m, k1, b, best_tok.stemmer, best_tok.stopwords), "2 method/k1/b")
        best = max(results.values(), key=lambda r: r.key).cfg
        for s, w in TOKENIZERS:
            run(cfg(best.method, best.k1, best.b, s, w), "3 cross-check")
    bar.total = bar.n
    bar.refresh()
    bar.close()

    ordered = sorted(results.values(), key=lambda r: r.key, reverse=True)  # stable: grid order breaks ties
    best = ordered[0]
    elapsed = time.perf_counter() - t_start

    d = best.metrics["dev"]
    n_tied = sum(1 for r in ordered if r.key[:2] == best.key[:2])
    lines = []
    lines.append("# BM25 parameters and tokenizer on fanoutqa-wiki (bm25s)\n")
    cmd = " ".join(["python", "bench/bm25_params.py", *(sys.argv[1:] if argv is None else argv)])
    lines.append(f"Command: `{cmd}` (from the repository root)  ")
    lines.append(f"Runtime: {elapsed:.0f} s for {len(results)} configurations; bm25s {bm25s.__version__}, "
                 f"Python {platform.python_version()}, single-threaded queries (`n_threads=1`) on a shared 2-core machine.\n")
    lines.append(f"Corpus: wiki-vital, {len(passages):,} passages, indexed as title + newline + text. "
                 + "; ".join(f"{s.name}: {len(s.items)} questions" + (f" ({s.n_raw} items, deduplicated by (id, question))"
                                                                          if len(s.items) != s.n_raw else "")
                             for s in splits)
                 + f". Dev questions without the word 'capital': {d['n_nocap']}. Test split never loaded.\n")
    lines.append("Metrics (percent of questions): ans@k = a top-k passage contains an answer "
                 "(`odqa.metrics.has_answer` on title + text, DPR convention); ev@20 = the evidence page "
                 "(title match) is in the top 20. Index s = bm25s `index()` on pre-tokenized passages; "
                 "query ms = median per question of `BM25Config.tokenize` + `retrieve(k=100, n_threads=1)`, "
                 "retrieve ms the `retrieve` part alone. "
                 "Corpus tokenization: "
                 + ", ".join(f"stem={s or 'none'}/stop={w or 'none'} {t:.1f} s" for (s, w), t in ev.tokenize_s.items())
                 + ". bm25l and bm25+ use bm25s's default delta=0.5.\n")
    lines.append(f"One dev question = {100 / d['n']:.1f} points of dev ev@20 / ans@k.\n")
    ans_str = " / ".join(f"{d['ans'][k]:.1f}" for k in KS)
    lines.append("## Best configuration\n")
    lines.append(f"`BM25Config(method={best.cfg.method!r}, k1={best.cfg.k1}, b={best.cfg.b}, "
                 f"stemmer={best.cfg.stemmer!r}, stopwords={best.cfg.stopwords!r})`: dev ev@20 {d['ev20']:.1f}, "
                 f"dev ans@1/5/20/100 {ans_str}, "
                 f"train ev@20 {best.metrics['train']['ev20']:.1f}, train ans@20 {best.metrics['train']['ans'][20]:.1f}. "
                 f"{n_tied} configuration(s) share its dev (ev@20, ans@20).\n")
    tok_rows = [r for r in ordered if r.stage in ("1 tokenizer", "3 cross-check")]
    if tok_rows:
        lines.append("## Tokenizer (stages 1 and 3)\n")
        lines.append(HEADER)
        lines += [fmt_row(i + 1, r) for i, r in enumerate(tok_rows)]
        lines.append("")
    lines.append(f"## All {len(ordered)} configurations, sorted by dev ev@20, then dev ans@20 (then ans@5, @1, @100)\n")
    lines.append(HEADER)
    lines += [fmt_row(i + 1, r) for i, r in enumerate(ordered)]
    lines.append("")
    report = "\n".join(lines)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")

    shown = ordered if not args.top else ordered[: args.top]
    print(HEADER)
    for i, r in enumerate(shown):
        print(fmt_row(i + 1, r))
    print(f"\nbest: {cfg_label(best.cfg)}  ({n_tied} tied on dev ev@20 + ans@20)")
    print(f"wrote {out}; {len(results)} configurations in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
