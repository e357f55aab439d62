"""The ``odqa`` command.

    odqa index build --corpus wiki-vital --out indexes/wiki-vital
    odqa ask "Who wrote Romeo and Juliet?"
    odqa run pipelines/frozen_reader.yml --question "..." [--json]
    odqa run pipelines/frozen_reader.yml --questions FILE.jsonl --out answers.jsonl
    odqa eval --pipeline pipelines/frozen_reader.yml --questions fanoutqa-wiki:test --out eval/runs/NAME
    odqa eval merge RUN_DIR... --out RUN_DIR
    odqa demo

Errors print one line (``error: ...``) and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import odqa  # noqa: F401 - sets the offline defaults before anything else loads
from odqa.errors import BadQuestionError, OdqaError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PIPELINE = REPO / "pipelines" / "frozen_reader.yml"
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


def cmd_index_build(args) -> int:
    from odqa.index import BM25Config, build_index

    bm25 = BM25Config(method=args.bm25_method, k1=args.bm25_k1, b=args.bm25_b,
                      stemmer=None if args.bm25_stemmer == "none" else args.bm25_stemmer,
                      stopwords=None if args.bm25_stopwords == "none" else args.bm25_stopwords)
    out = build_index(args.corpus, args.out, encoder=args.encoder, query_encoder=args.query_encoder,
                      faiss_type=args.faiss, bm25=bm25, force=args.force, limit=args.limit,
                      batch_size=args.batch_size, shard=args.shard, shards=args.shards)
    if args.shard is not None:
        print(f"shard {args.shard} of {args.shards} encoded into {out}; when every shard is done, run the "
              "same command without --shard/--shards to merge and finish the index")
        return 0
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"built {out}: {manifest['count']} passages, encoder {manifest['encoder']} (dim {manifest['dim']}), "
          f"faiss {manifest['faiss']['type']}")
    return 0


def cmd_ask(args) -> int:
    import odqa as api

    qa = api.load(args.pipeline)
    _print_answer(qa.ask(args.question), args.json)
    return 0


def cmd_run(args) -> int:
    import odqa as api

    if bool(args.question is not None) == bool(args.questions):
        raise OdqaError("pass exactly one of --question TEXT or --questions FILE.jsonl")
    qa = api.load(args.pipeline)
    if args.question is not None:
        _print_answer(qa.ask(args.question), args.json)
        return 0
    if not args.out:
        raise OdqaError("--questions needs --out FILE.jsonl for the answers")
    from tqdm.auto import tqdm

    from odqa.questions import dedup, load_questions
    from odqa.runs import RunWriter, read_records

    questions = load_questions(args.questions)
    unique = dedup(questions)
    if len(unique) < len(questions):
        print(f"{len(questions) - len(unique)} repeated (id, question) items answered once", file=sys.stderr)
    questions = unique
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {str(r["id"]) for r in read_records(out)}
    todo = [q for q in questions if q.id not in done]
    if done:
        print(f"resuming: {len(done)} of {len(questions)} already answered in {out}", file=sys.stderr)
    failed = 0
    with RunWriter(out) as writer:
        for q in tqdm(todo, desc="answering", unit="q"):
            try:
                record = {"id": q.id, "answers": q.answers, **qa.ask(q.question).to_dict()}
            except BadQuestionError as e:  # one bad question does not stop the batch
                failed += 1
                record = {"id": q.id, "answers": q.answers, "question": q.question, "error": str(e)}
            writer.write(record)
    note = f" ({failed} could not be answered; see their 'error' field)" if failed else ""
    print(f"wrote {len(questions)} answers to {out}{note}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from odqa import evaluation
    from odqa.report import write_report

    command = "odqa " + " ".join(sys.argv[1:]) if sys.argv and "odqa" in sys.argv[0] else "odqa eval ..."
    out = Path(args.out)
    if args.rest and args.rest[0] == "merge":
        if len(args.rest) < 2:
            raise OdqaError("odqa eval merge needs the shard run directories: odqa eval merge DIR... --out DIR")
        metrics = evaluation.merge([Path(d) for d in args.rest[1:]], out)
    elif args.rest:
        raise OdqaError(f"unknown eval action '{args.rest[0]}'; use `odqa eval --pipeline ...` or `odqa eval merge`")
    else:
        if not args.pipeline or not args.questions:
            raise OdqaError("odqa eval needs --pipeline and --questions")
        import odqa as api
        from odqa.questions import load_questions

        questions = load_questions(args.questions, require_answers=True)[: args.limit]
        qa = api.load(args.pipeline)
        metrics = evaluation.evaluate(qa, questions, out, shard=args.shard, shards=args.shards)
        if args.ablate:
            rows = [("full pipeline", metrics)]
            for name in [n.strip() for n in args.ablate.split(",") if n.strip()]:
                ablated = evaluation.without_stage(qa, name)
                sub_out = out / f"without-{name}"
                rows.append((f"without {name}", None if ablated is None else
                             evaluation.evaluate(ablated, questions, sub_out, shard=args.shard, shards=args.shards)))
                if ablated is not None:
                    write_report(sub_out, f"odqa evaluation: {args.pipeline} without {name}", command)
            (out / "ablation.md").write_text(f"# Ablations\n\nCommand: `{command}`\n\n"
                                             + evaluation.ablation_table(rows), encoding="utf-8")
    report = write_report(out, f"odqa evaluation: {args.pipeline or 'merged shards'} on {args.questions or ''}",
                          command)
    print(json.dumps(metrics) if args.json else
          f"EM {metrics['em']:.1f}  F1 {metrics['f1']:.1f}  LM-input recall {metrics['lm_input_recall']:.1f}  "
          f"({metrics['questions']} questions); report: {report}")
    return 0


def cmd_demo(args) -> int:
    import odqa as api

    qa = api.load(args.pipeline)
    print(f"pipeline: {args.pipeline}\n")
    for question, expected in DEMO_QUESTIONS:
        _print_answer(qa.ask(question), False, expected)
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from odqa.index import BM25Config

    p = argparse.ArgumentParser(prog="odqa", description="Open-domain QA on a frozen language model.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    idx = sub.add_parser("index", help="build search indexes").add_subparsers(dest="index_cmd", required=True)
    b = idx.add_parser("build", help="build BM25 + FAISS indexes from a corpus")
    b.add_argument("--corpus", required=True, help="wiki-vital, a DPR psgs_w100.tsv file, or a .jsonl file")
    b.add_argument("--out", required=True, help="index directory to create, e.g. indexes/wiki-vital")
    b.add_argument("--encoder", default="minilm-l6",
                   help="sentence-transformers model, or a DPR context encoder (id or path)")
    b.add_argument("--query-encoder", default=None, help="DPR question encoder (default: derived from --encoder)")
    b.add_argument("--faiss", default="flat", choices=["flat", "ivf", "hnsw"])
    b.add_argument("--bm25-method", default="lucene", choices=["lucene", "robertson", "atire", "bm25l", "bm25+"])
    b.add_argument("--bm25-k1", type=float, default=BM25Config.k1)
    b.add_argument("--bm25-b", type=float, default=BM25Config.b)
    b.add_argument("--bm25-stemmer", default="english", help="a PyStemmer language, or none")
    b.add_argument("--bm25-stopwords", default="none", help="en, or none (default: none, chosen on dev)")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    b.add_argument("--force", action="store_true", help="replace an existing index")
    b.add_argument("--shards", type=int, default=1, help="split embedding over N processes (with --shard)")
    b.add_argument("--shard", type=int, default=None,
                   help="encode only this shard (0..N-1); a final run without it merges")
    b.set_defaults(func=cmd_index_build)

    a = sub.add_parser("ask", help="answer one question with the default pipeline")
    a.add_argument("question")
    a.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_ask)

    r = sub.add_parser("run", help="run a pipeline on one question or a jsonl file of questions")
    r.add_argument("pipeline")
    r.add_argument("--question")
    r.add_argument("--questions", help="jsonl file with a 'question' per line, or fanoutqa-wiki[:split]")
    r.add_argument("--out", help="answers jsonl (appended to; a rerun resumes)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate a pipeline on a question set (NQ metrics, per stage)")
    e.add_argument("rest", nargs="*", help="`merge DIR...` joins shard runs")
    e.add_argument("--pipeline")
    e.add_argument("--questions", help="fanoutqa-wiki[:split], NQ-open .jsonl, or DPR nq-test .csv")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--out", required=True, help="run directory, e.g. eval/runs/NAME (a rerun resumes)")
    e.add_argument("--shards", type=int, default=1)
    e.add_argument("--shard", type=int, default=None)
    e.add_argument("--ablate", default="", help="comma-separated stages to rerun without, e.g. ranker,dense,bm25")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="answer a few sample questions")
    d.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # an error after a model load must still be one line
    hf_logging.set_verbosity_error()
    try:
        return args.func(args)
    except OdqaError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
