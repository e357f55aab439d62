"""``odqa ask``, ``odqa run`` and ``odqa demo``: answer questions with a pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from odqa.cli._common import DEFAULT_PIPELINE, positive_int
from odqa.errors import OdqaError

# (question, the answer the bundled corpus gives): printed side by side, right or wrong
DEMO_QUESTIONS = [
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("What is the capital of Australia?", "Canberra"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("Who developed the theory of general relativity?", "Albert Einstein"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("In which city is the Eiffel Tower?", "Paris"),
]


def _print_answer(a, as_json: bool, expected: str | None = None) -> None:
    if as_json:
        print(json.dumps(a.to_dict(), ensure_ascii=False))
        return
    titles = ", ".join(dict.fromkeys(p.title for p in a.passages)) or "(no passages)"
    print(f"Q: {a.question}\nA: {a.answer}   (score {a.score:.2f})")
    if expected is not None:
        print(f"   expected: {expected}")
    print(f"   sources: {titles}")
    stages = "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in a.timings.items())
    print(f"   timings: {stages}")


def cmd_ask(args) -> int:
    import odqa as api

    qa = api.load(args.pipeline)
    _print_answer(qa.ask(args.question, task=args.task) if args.task is not None else qa.ask(args.question), args.json)
    return 0


def cmd_run(args) -> int:
    import odqa as api

    if bool(args.question is not None) == bool(args.questions):
        raise OdqaError("pass exactly one of --question TEXT or --questions FILE.jsonl")
    if bool(args.pipeline) == bool(args.pipeline_opt):
        raise OdqaError("name the pipeline once: odqa run PIPELINE.yml ... or odqa run --pipeline PIPELINE.yml ...")
    args.pipeline = args.pipeline or args.pipeline_opt
    qa = api.load(args.pipeline)
    ask = (lambda text: qa.ask(text, task=args.task)) if args.task is not None else qa.ask
    if args.question is not None:
        _print_answer(ask(args.question), args.json)
        return 0
    if not args.out:
        raise OdqaError("--questions needs --out FILE.jsonl for the answers")
    from tqdm.auto import tqdm

    from odqa.data.questions import dedup, load_questions
    from odqa.runs import OutputLock, RunWriter, read_records

    questions = load_questions(args.questions)  # bad question texts are kept: each gets an error line
    unique = dedup(questions)
    if len(unique) < len(questions):
        print(f"{len(questions) - len(unique)} repeated (id, question) items answered once", file=sys.stderr)
    questions = unique
    out = Path(args.out)
    failed = 0
    with OutputLock(out):
        done = {str(r["id"]) for r in read_records(out)}
        todo = [q for q in questions if q.id not in done]
        if done:
            print(f"resuming: {len(done)} of {len(questions)} already answered in {out}", file=sys.stderr)
        step = args.batch_size
        with RunWriter(out) as writer, tqdm(total=len(todo), desc="answering", unit="q") as bar:
            for start in range(0, len(todo), step):  # each batch is written before the next is read
                chunk = todo[start:start + step]  # one bad question gets its error record, the rest go on
                results = qa.ask_many([q.question for q in chunk], progress=False, task=args.task, batch_size=step)
                for q, result in zip(chunk, results):
                    failed += not result.ok
                    writer.write({"id": q.id, "answers": q.answers, **result.to_dict()})
                bar.update(len(chunk))
    note = f" ({failed} could not be answered; see their 'error' field)" if failed else ""
    print(f"wrote {len(questions)} answers to {out}{note}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    import odqa as api

    qa = api.load(args.pipeline)
    print(f"pipeline: {args.pipeline}\n")
    for question, expected in DEMO_QUESTIONS:
        _print_answer(qa.ask(question), False, expected)
        print()
    return 0


def register(sub) -> None:
    a = sub.add_parser("ask", help="answer one question with the default pipeline")
    a.add_argument("question")
    a.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--task", default=None, help="multitask pipelines (idpt_multitask.yml): TASK or TASK/TEMPLATE")
    a.set_defaults(func=cmd_ask)

    r = sub.add_parser("run", help="run a pipeline on one question or a jsonl file of questions")
    r.add_argument("pipeline", nargs="?")
    r.add_argument("--pipeline", dest="pipeline_opt", default=None, help="the pipeline YAML (or give it first)")
    r.add_argument("--question")
    r.add_argument("--task", default=None, help="multitask pipelines (idpt_multitask.yml): the task whose template "
                                                 "the input is rendered with, TASK or TASK/TEMPLATE (e.g. topic)")
    r.add_argument("--questions", help="jsonl file with a 'question' per line, or fanoutqa-wiki[:split]")
    r.add_argument("--out", help="answers jsonl (appended to; a rerun resumes)")
    r.add_argument("--json", action="store_true")
    r.add_argument("--batch-size", type=positive_int, default=1,
                   help="--questions: questions the reader decodes together (same answers as one by one)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="answer a few sample questions")
    d.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    d.set_defaults(func=cmd_demo)
