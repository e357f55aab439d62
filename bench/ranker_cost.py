"""The re-ranker's added latency against the reader's, by candidate count and pair length.

For a pipeline with a ``CrossEncoderRanker``: each question goes through the whole pipeline once
(its reader's time is the yardstick), and the ranker is then timed again on the same join output
at every (candidates, max_length) setting asked for, round-robin per question, so load from other
processes hits all settings alike. Two warm-up questions are not timed. It prints, and writes to
``bench/results/ranker_cost.md``, the median milliseconds per question of each setting and its
ratio to the reader's median (the issue's aim: at most a third).

    python bench/ranker_cost.py --pipeline pipelines/frozen_reader_ranked.yml --limit 40 \\
        --candidates 5,10,20 --max-length 128,256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import odqa
from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)
from odqa.components.rankers import CrossEncoderRanker
from odqa.data.questions import dedup, load_questions
from odqa.training.reranker import documents_sender

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines/frozen_reader_ranked.yml"))
    ap.add_argument("--questions", default="trivia-wiki:dev")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--candidates", type=ints, default=[5, 10, 20])
    ap.add_argument("--max-length", type=ints, default=[128, 256])
    ap.add_argument("--out", default=str(ROOT / "bench/results/ranker_cost.md"))
    args = ap.parse_args()

    qa = odqa.load(args.pipeline)
    names = [n for n, c in qa.pipeline.walk() if isinstance(c, CrossEncoderRanker)]
    if not names:
        sys.exit(f"error: {args.pipeline} has no CrossEncoderRanker; pass e.g. pipelines/frozen_reader_ranked.yml")
    name = names[0]
    shipped = qa.pipeline.get_component(name)
    source = documents_sender(qa.pipeline, name)
    settings = [(c, n) for c in args.candidates for n in args.max_length]
    rankers = {s: CrossEncoderRanker(model=shipped.model, candidates=s[0], max_length=s[1],
                                     batch_size=shipped.batch_size) for s in settings}
    for r in rankers.values():
        r.warm_up()
    questions = dedup(load_questions(args.questions))[: args.limit + WARMUP]
    times: dict = {s: [] for s in settings}
    reader, shipped_ms = [], []
    for i, q in enumerate(tqdm(questions, desc="timing", unit="q")):
        answer, out = qa.ask_with_outputs(q.question)
        docs = out[source]["documents"]
        for s, r in rankers.items():
            start = time.perf_counter()
            r.run(query=q.question, documents=docs)
            if i >= WARMUP:
                times[s].append(time.perf_counter() - start)
        if i >= WARMUP:
            reader.append(answer.timings[qa.reader])
            shipped_ms.append(answer.timings[name])
    reader_ms = 1000 * statistics.median(reader)
    lines = [
        f"# Re-ranker cost: `{shipped.model}`", "",
        f"Command: `{command()}`  ",
        f"{len(reader)} questions of `{args.questions}` (after {WARMUP} warm-up), {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; candidates are the pipeline's "
        f"`{source}` output.", "",
        f"Reader (`{qa.reader}`), median: **{reader_ms:.0f} ms** per question. "
        f"The pipeline's own ranker setting (candidates {shipped.candidates}, max_length {shipped.max_length}): "
        f"{1000 * statistics.median(shipped_ms):.0f} ms.", "",
        "| candidates | max_length | ranker median ms | p90 ms | ranker / reader |",
        "|---:|---:|---:|---:|---:|",
    ]
    for (c, n), ts in times.items():
        ms = sorted(1000 * t for t in ts)
        med, p90 = statistics.median(ms), ms[int(0.9 * (len(ms) - 1))]
        lines.append(f"| {c} | {n} | {med:.0f} | {p90:.0f} | {med / reader_ms:.2f} |")
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
