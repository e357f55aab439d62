"""Which zero-shot reader prompt makes the instruct model answer with a short span?

For each (template, context_length) setting, runs the default pipeline's hybrid
retrieval once per question, then packs and reads, and reports:

- span rate: share of answers of at most 5 words (a span, not a sentence);
- mean answer length in words;
- EM and F1 (SQuAD normalization), and "contains": the answer string appears in the output;
- LM-input recall: the answer is in the packed context (DPR has_answer);
- seconds per question for packing + reading.

Tunes on the dev split of the bundled benchmark (never test).

    python bench/reader_prompts.py --questions fanoutqa-wiki:dev --limit 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import odqa  # noqa: F401
from odqa.api import load_pipeline
from odqa.components import ContextPacker, FrozenLMReader
from odqa.metrics import contains_normalized, exact_match, f1, has_answer
from odqa.data.questions import load_questions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default="fanoutqa-wiki:dev")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "frozen_reader.yml"))
    ap.add_argument("--settings", default="span-chat:1024,span-chat:512,chat:1024,qa-completion:1024,span-chat:0",
                    help="template:context_length pairs; context_length 0 means closed-book (no passages)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reader_prompts.md"))
    args = ap.parse_args()

    questions = load_questions(args.questions)[: args.limit]
    pipe = load_pipeline(args.pipeline)
    for name in ("packer", "reader"):  # retrieval only; packing and reading vary below
        pipe.remove_component(name)
    retrieval = {}
    for q in tqdm(questions, desc="retrieving"):
        out = pipe.run({"query": q.question}, include_outputs_from={"join"})
        retrieval[q.id + q.question] = out["join"]["documents"]

    rows = []
    for setting in args.settings.split(","):
        template, ctx = setting.split(":")
        ctx = int(ctx)
        closed = ctx == 0
        ctx = ctx or 1024
        packer = ContextPacker(model="smollm2-135m-instruct", template=template, context_length=ctx)
        reader = FrozenLMReader(model="smollm2-135m-instruct", template=template, context_length=ctx)
        ems, f1s, contains, spans, words, recall, secs = [], [], [], [], [], [], []
        for q in tqdm(questions, desc=setting):
            docs = [] if closed else retrieval[q.id + q.question]
            t = time.perf_counter()
            packed = packer.run(query=q.question, documents=docs)["documents"]
            pred = reader.run(query=q.question, documents=packed)["answers"][0].data
            secs.append(time.perf_counter() - t)
            ems.append(exact_match(pred, q.answers))
            f1s.append(f1(pred, q.answers))
            contains.append(contains_normalized(pred, q.answers))
            n = len(pred.split())
            words.append(n)
            spans.append(n <= 5)
            recall.append(any(has_answer(f"{d.meta.get('title', '')}\n{d.content}", q.answers) for d in packed))
        pct = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
        rows.append((template, "closed-book" if closed else ctx, pct(spans), statistics.mean(words), pct(ems),
                     pct(f1s), pct(contains), pct(recall), statistics.median(secs)))

    header = ("| template | context | span rate (<=5 words) | mean words | EM | F1 | contains | "
              "LM-input recall | s/q (median) |\n|---|---|---|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {t} | {c} | {s:.1f}% | {w:.1f} | {e:.1f} | {f:.1f} | {co:.1f} | {r:.1f} | {sec:.2f} |\n"
        for t, c, s, w, e, f, co, r, sec in rows
    )
    cmd = "python " + " ".join(sys.argv)
    text = (f"# Zero-shot reader prompts (SmolLM2-135M-Instruct, hybrid top-20, greedy, 16 new tokens)\n\n"
            f"Questions: `{args.questions}`, first {len(questions)}. Command: `{cmd}`\n\n{table}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
