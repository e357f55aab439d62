"""Figures for the core pipeline: retrieval top-20 answer share, per-stage latency, peak memory.

1. For BM25, dense and hybrid (RRF) retrieval over the default index: the share of bundled
   questions (``fanoutqa-wiki``, deduplicated by (id, question)) whose answer string is in
   the top-20 passages (DPR ``has_answer``), and whose evidence page is in the top 20.
2. The default pipeline end to end on the first N bundled questions: median and p90
   seconds per stage, and the process's peak resident memory.

    python bench/pipeline_report.py --latency-questions 50
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import odqa
from odqa.api import load_pipeline
from odqa.metrics import has_answer
from odqa.data.questions import dedup, load_questions

ROOT = Path(__file__).resolve().parent.parent


def retrieval_table(questions, items) -> str:
    pipe = load_pipeline(ROOT / "pipelines" / "frozen_reader.yml")
    for name in ("packer", "reader"):
        pipe.remove_component(name)
    hits = {"bm25": [], "dense": [], "join": []}
    evid = {"bm25": [], "dense": [], "join": []}
    for q in tqdm(questions, desc="retrieval"):
        out = pipe.run({"query": q.question}, include_outputs_from={"bm25", "dense"})
        for stage in hits:
            docs = out[stage]["documents"][:20]
            hits[stage].append(any(has_answer(d.content, q.answers) for d in docs))
            evid[stage].append(any(d.meta["title"] == q.evidence_title for d in docs))
    pct = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
    position = {(q.id, q.question): i for i, q in enumerate(questions)}
    rows = []
    for stage, label in (("bm25", "BM25 (bm25s)"), ("dense", "dense (MiniLM, FAISS flat IP)"), ("join", "hybrid (RRF)")):
        cells = []
        for qs in (questions, items):  # unique questions, then every item (as DESIGN.md's baselines count)
            idx = [position[(q.id, q.question)] for q in qs]
            h = [hits[stage][i] for i in idx]
            h_ans = [hits[stage][i] for i, q in zip(idx, qs) if q.answer_in_evidence]
            e = [evid[stage][i] for i in idx]
            cells += [pct(h), pct(h_ans), pct(e)]
        rows.append(f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return ("| retriever | unique: answer@20 (all) | unique: answer@20 (answerable) | unique: evidence@20 | "
            "items: answer@20 (all) | items: answer@20 (answerable) | items: evidence@20 |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def latency_table(questions) -> tuple[str, float]:
    qa = odqa.load(ROOT / "pipelines" / "frozen_reader.yml")
    qa.warm_up()
    qa.ask("warm-up question")  # first call pays one-off costs (lazy loads, allocator)
    per_stage: dict[str, list[float]] = {}
    for q in tqdm(questions, desc="latency"):
        result = qa.ask(q.question)
        for stage, secs in result.timings.items():
            per_stage.setdefault(stage, []).append(secs)
    rows = []
    for stage, xs in per_stage.items():
        xs = sorted(xs)
        p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
        rows.append(f"| {stage} | {1000 * statistics.median(xs):.1f} | {1000 * p90:.1f} |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return "| stage | median ms | p90 ms |\n|---|---|---|\n" + "\n".join(rows), peak_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-questions", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline_report.md"))
    args = ap.parse_args()

    items = load_questions("fanoutqa-wiki")
    questions = dedup(items)
    t = time.time()
    retrieval = retrieval_table(questions, items)
    latency, peak_mb = latency_table(questions[: args.latency_questions])
    cmd = "python " + " ".join(sys.argv)
    text = (
        f"# Core pipeline figures\n\nCommand: `{cmd}` (2 CPU cores). Took {time.time() - t:.0f} s.\n\n"
        f"## Retrieval over `indexes/wiki-vital`\n\n`fanoutqa-wiki`: {len(questions)} unique questions "
        f"({sum(q.answer_in_evidence for q in questions)} answerable from the evidence lead) and all {len(items)} "
        f"items ({sum(q.answer_in_evidence for q in items)} answerable). Answer@20: DPR `has_answer` on the "
        f"text (not the title, as DPR does) of a top-20 passage. Evidence@20: the evidence page is in the top "
        f"20.\n\n{retrieval}\n\n"
        f"## Default pipeline (`pipelines/frozen_reader.yml`), first {args.latency_questions} questions\n\n"
        f"{latency}\n\nPeak resident memory of the process: {peak_mb:.0f} MB.\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
