"""``odqa eval``: a pipeline on a question set (every stage scored, here or on a Ray actor pool),
paired comparisons of two runs, DPR result files, and the ID-PT multitask comparison."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from odqa.cli._common import add_engine_options, engine_from_args, positive_int
from odqa.errors import OdqaError


def cmd_eval(args) -> int:
    from odqa.eval import harness as evaluation
    from odqa.eval.report import write_report

    from odqa.artifacts import command_line

    command = command_line()
    if args.rest and args.rest[0] == "idpt":
        return cmd_eval_idpt(args, command)
    if args.rest and args.rest[0] == "retrieval":  # score a DPR retriever-output file; no pipeline runs
        from odqa.eval import retrieval as retrieval_eval

        if len(args.rest) > 1 or not args.results:
            raise OdqaError("odqa eval retrieval takes its file as --results FILE: "
                            "odqa eval retrieval --results dpr_results.json [--out DIR] [--k 1,5,20,100]")
        if args.pipeline or args.questions:
            raise OdqaError("odqa eval retrieval scores a results file; drop --pipeline/--questions")
        ks = retrieval_eval.parse_ks(args.k) if args.k else evaluation.KS
        metrics = retrieval_eval.evaluate_file(args.results, args.out, ks, command)
        where = f"\nreport: {Path(args.out) / 'report.md'}" if args.out else ""
        print(json.dumps(metrics) if args.json else f"{args.results}: {retrieval_eval.table(metrics)}{where}")
        return 0
    if args.rest and args.rest[0] == "compare":  # two finished runs, question by question
        if len(args.rest) != 3:
            raise OdqaError("odqa eval compare takes two run directories: odqa eval compare RUN_A RUN_B")
        result = evaluation.compare(Path(args.rest[1]), Path(args.rest[2]))
        print(json.dumps(result) if args.json else evaluation.comparison_line(result))
        return 0
    if args.results or args.k:
        raise OdqaError("--results and --k belong to `odqa eval retrieval --results FILE`")
    if not args.out:
        raise OdqaError("odqa eval needs --out DIR, the run directory (e.g. --out eval/runs/NAME)")
    out = Path(args.out)
    if args.rest:
        raise OdqaError(f"unknown eval action '{args.rest[0]}'; use `odqa eval --pipeline ...`, "
                        "`odqa eval compare`, `odqa eval retrieval` or `odqa eval idpt`")
    if not args.pipeline or not args.questions:
        raise OdqaError("odqa eval needs --pipeline and --questions")
    import odqa as api
    from odqa.data.questions import load_questions

    engine = engine_from_args(args)
    questions = load_questions(args.questions, require_answers=True)[: args.limit]
    qa = api.load(args.pipeline)
    with engine or contextlib.nullcontext():  # one Ray runtime for the run and its ablations
        metrics = evaluation.evaluate(qa, questions, out, batch_size=args.batch_size, engine=engine)
        if args.ablate:
            rows = [("full pipeline", metrics)]
            for name in [n.strip() for n in args.ablate.split(",") if n.strip()]:
                ablated = evaluation.without_stage(qa, name)
                sub_out = out / f"without-{name}"
                rows.append((f"without {name}", None if ablated is None else
                             evaluation.evaluate(ablated, questions, sub_out, batch_size=args.batch_size,
                                                 engine=engine)))
                if ablated is not None:
                    write_report(sub_out, f"odqa evaluation: {args.pipeline} without {name}", command)
            (out / "ablation.md").write_text(f"# Ablations\n\nCommand: `{command}`\n\n"
                                             + evaluation.ablation_table(rows), encoding="utf-8")
    report = write_report(out, f"odqa evaluation: {args.pipeline} on {args.questions}", command)
    print(json.dumps(metrics) if args.json else
          f"EM {metrics['em']:.1f}  F1 {metrics['f1']:.1f}  LM-input recall {metrics['lm_input_recall']:.1f}  "
          f"({metrics['questions']} questions); report: {report}")
    return 0


def cmd_eval_idpt(args, command: str) -> int:
    from odqa.eval.multitask import evaluate_idpt, report_table

    if not args.out:
        raise OdqaError("odqa eval idpt needs --out DIR, e.g. --out eval/runs/idpt")
    systems = {name: path for name, path in (("idpt", args.idpt), ("prompt", args.soft_prompt),
                                             ("finetune", args.finetuned)) if path}
    if args.zero_shot:
        systems["frozen"] = None
    metrics = evaluate_idpt(args.data, systems, args.out, model=args.model, limit_per_task=args.limit,
                            timing_inputs=args.timing_inputs, command=command)
    print(json.dumps(metrics) if args.json else f"{report_table(metrics)}\nreport: {Path(args.out) / 'report.md'}")
    return 0


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a pipeline on a question set (NQ metrics, per stage), "
                                    "or score a DPR retrieval results file")
    e.add_argument("rest", nargs="*",
                   help="`compare RUN_A RUN_B`: paired differences with 95%% intervals; `retrieval` scores a "
                        "DPR results file (--results)")
    e.add_argument("--pipeline")
    e.add_argument("--questions", help="fanoutqa-wiki[:split], NQ-open .jsonl, or DPR nq-test .csv")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--out", help="run directory, e.g. eval/runs/NAME (a rerun resumes); "
                                 "optional for `eval retrieval`")
    e.add_argument("--results", help="for `eval retrieval`: DPR retriever output (JSON list of "
                                     "question/answers/ctxs)")
    e.add_argument("--k", default=None, help="for `eval retrieval`: comma-separated k, default 1,5,20,100")
    e.add_argument("--batch-size", type=positive_int, default=1,
                   help="questions the reader decodes together (same answers as one by one)")
    add_engine_options(e, "--num-actors", "actors, each holding the pipeline")
    e.add_argument("--ablate", default="", help="comma-separated stages to rerun without, e.g. ranker,dense,bm25")
    e.add_argument("--data", default="data/multitask/wiki-mixture", help="for `eval idpt`: the multitask mixture")
    e.add_argument("--idpt", default=None, help="for `eval idpt`: the ID-PT generator artifact")
    e.add_argument("--soft-prompt", default=None, help="for `eval idpt`: the plain prompt-tuning artifact")
    e.add_argument("--finetuned", default=None, help="for `eval idpt`: the fine-tuned backbone directory")
    e.add_argument("--zero-shot", action="store_true", help="for `eval idpt`: also score the frozen LM alone")
    e.add_argument("--model", default="smollm2-135m-instruct", help="for `eval idpt`: the frozen backbone")
    e.add_argument("--timing-inputs", type=int, default=30, help="for `eval idpt`: inputs timed per system")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
