"""Pipelines side by side: median seconds per question and per stage, on the same questions,
interleaved (question 1 through every pipeline, then question 2, ...) so load from other
processes hits every pipeline alike. Each pipeline first answers 2 warm-up questions, not timed.
With ``--batch-size N`` each pipeline also answers the questions N at a time (``QA.ask_many``),
and the table gains its answers per second batched; batched answers are checked against the
single ones (they should all be the same).

    python bench/pipeline_latency.py pipelines/frozen_reader.yml pipelines/frozen_reader_smollm2.yml \\
        --questions trivia-wiki:dev --limit 30 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

import odqa
from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)
from odqa.data.questions import dedup, load_questions

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipelines", nargs="+")
    ap.add_argument("--questions", default="trivia-wiki:dev")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=0, help="also time answering N at a time (0: not)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/pipeline_latency.md"))
    args = ap.parse_args()

    qas = {p: odqa.load(p) for p in args.pipelines}
    questions = [q.question for q in dedup(load_questions(args.questions))][: args.limit + WARMUP]
    for qa in qas.values():
        qa.ask_many(questions[:WARMUP], progress=False)
    timed = questions[WARMUP:]
    single: dict[str, list] = {p: [] for p in qas}
    for q in tqdm(timed, desc="single stream", unit="q"):
        for p, qa in qas.items():
            single[p].append(qa.ask(q))
    batched: dict[str, tuple[float, list]] = {}
    if args.batch_size > 1:
        for p, qa in tqdm(qas.items(), desc=f"batches of {args.batch_size}", unit="pipeline"):
            start = time.perf_counter()
            answers = qa.ask_many(timed, progress=False, batch_size=args.batch_size)
            batched[p] = (time.perf_counter() - start, answers)

    stages = sorted({k for answers in single.values() for a in answers for k in a.timings if k != "total"})
    head = ["pipeline", "median s/q", "answers/s single"] + (
        [f"answers/s batch {args.batch_size}", "batched = single"] if batched else []) + [
        f"{s} ms" for s in stages]
    lines = [
        "# Pipelines side by side", "",
        f"Command: `{command()}`  ",
        f"{len(timed)} questions of `{args.questions}` (after {WARMUP} warm-up), interleaved; "
        f"{os.cpu_count()} CPU cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}. "
        "Stage columns: median ms per question (single stream).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for p, answers in single.items():
        total = [a.timings["total"] for a in answers]
        row = [f"`{Path(p).name}`", f"{statistics.median(total):.3f}", f"{len(total) / sum(total):.2f}"]
        if batched:
            seconds, together = batched[p]
            same = sum(a.answer == b.answer for a, b in zip(answers, together))
            row += [f"{len(together) / seconds:.2f}", f"{same}/{len(answers)}"]
        row += [f"{1000 * statistics.median([a.timings.get(s, 0.0) for a in answers]):.1f}" for s in stages]
        lines.append("| " + " | ".join(row) + " |")
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
