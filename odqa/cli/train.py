"""``odqa train MODULE``: one parser per trained module, each writing an artifact dir.

Every setting flag comes from the module's config dataclass in :mod:`odqa.configs` (its help
text sits beside the field there), with the loop's settings in one shared group; only the
inputs and outputs (``--pipeline``, ``--train``, ``--out``, ...) are declared here.
"""

from __future__ import annotations

import json
from pathlib import Path

from odqa.cli._common import DEFAULT_PIPELINE
from odqa.errors import OdqaError


def _config(cls, args):
    config = cls.from_args(args)
    return config.quick() if args.quick else config


def cmd_train_reader(args) -> int:
    from odqa.configs import ReaderTrainConfig
    from odqa.data.negatives import read_training_data
    from odqa.data.questions import dedup, is_question_set, load_questions
    from odqa.training.reader import train_reader

    if is_question_set(args.train):  # e.g. trivia-wiki:train: real questions, contexts from the pipeline
        examples = dedup(load_questions(args.train, require_answers=True))
        synthetic = False
    else:
        examples = read_training_data(args.train)
        synthetic = bool(examples) and all(e.synthetic for e in examples)
    train = [{"id": e.id, "question": e.question, "answers": e.answers} for e in examples]
    dev = [{"id": q.id, "question": q.question, "answers": q.answers}
           for q in load_questions(args.dev, require_answers=True)]
    source = {"train": str(args.train), "synthetic": synthetic,
              "kind": "synthetic cloze QA from the corpus" if synthetic else "real questions"}
    manifest = train_reader(args.pipeline, train, dev, args.out, _config(ReaderTrainConfig, args), source,
                            resume=args.resume)
    best = manifest["dev_metrics"]["best"]
    print(f"soft prompt written to {args.out}: {manifest['length']} vectors, {manifest['steps']} steps in "
          f"{manifest['train_seconds'] / 60:.1f} min; dev EM {best['em']:.1f} F1 {best['f1']:.1f} at step "
          f"{best['step']} ({best['questions']} questions); backbone hash unchanged ({manifest['backbone_hash'][:12]})")
    return 0


def cmd_train_reranker(args) -> int:
    from odqa.configs import RerankerTrainConfig
    from odqa.training.reranker import metrics_table, train_reranker

    result = train_reranker(args.pipeline, args.train, args.dev, args.out, _config(RerankerTrainConfig, args),
                            resume=args.resume)
    m = result["manifest"]
    if args.json:
        print(json.dumps({k: m[k] for k in ("dev_metrics", "trainable_params", "train_seconds", "size_bytes")}))
        return 0
    dm = m["dev_metrics"]
    print(f"re-ranker written to {args.out}: {m['trainable_params']:,} trainable parameters, "
          f"{result['size_bytes'] / 2**20:.2f} MB, {m['data']['steps']} steps in {m['train_seconds'] / 60:.1f} min; "
          f"base hash unchanged ({m['base_model_hash'][:12]})")
    print(f"dev: {dm['questions']} questions x {dm['candidates_per_question']} candidates from "
          f"'{dm['candidates_from']}', best step {dm['best_step']}\n{metrics_table(dm)}")
    return 0


def cmd_train_recursive(args) -> int:
    from odqa.configs import RecursiveTrainConfig
    from odqa.data.questions import dedup, load_questions
    from odqa.training.recursive import train_recursive

    def items(spec: str) -> list[dict]:
        return [{"id": q.id, "question": q.question, "answers": q.answers}
                for q in dedup(load_questions(spec, require_answers=True))]

    if not args.pretrain and args.mode != "neural":
        raise OdqaError("--no-pretrain applies to --mode neural only (the connector's pre-training)")
    train = items(args.train)
    source = {"train": f"real: {args.train}", "synthetic": False, "kind": "real questions (closed-book)"}
    manifest = train_recursive(args.mode, args.model, train, items(args.dev), args.out,
                               _config(RecursiveTrainConfig, args), source, first_prompt=args.first_prompt,
                               connector_dir=args.connector, resume=args.resume)
    best = manifest["dev_metrics"]["best"]
    print(f"{args.mode} artifact written to {args.out}: {manifest['trainable_params']:,} trainable parameters, "
          f"{manifest['steps']} steps in {manifest['train_seconds'] / 60:.1f} min; dev EM {best['em']:.1f} "
          f"F1 {best['f1']:.1f} at step {best['step']} ({best['questions']} questions); backbone hash unchanged "
          f"({manifest['backbone_hash'][:12]})")
    return 0


def cmd_train_idpt(args) -> int:
    from odqa.configs import IDPTTrainConfig
    from odqa.data.multitask import read_multitask
    from odqa.training.idpt import default_finetune_out, train_idpt

    config = _config(IDPTTrainConfig, args)
    train = read_multitask(args.train or args.data, None if args.train else "train", args.task_name)
    dev = read_multitask(args.dev or args.data, None if args.dev else "dev", args.task_name)
    if args.out is None and args.mode != "finetune":
        raise OdqaError(f"--mode {args.mode} needs --out DIR, e.g. pipelines/artifacts/{args.mode}-smollm2-multitask")
    out = Path(args.out) if args.out else default_finetune_out(args.model)
    source = {"train": str(args.train or f"{args.data}:train"), "dev": str(args.dev or f"{args.data}:dev"),
              "synthetic": "partly: cloze and subject tasks are made by odqa from the corpus"}
    manifest = train_idpt(train, dev, out, config, args.model, source, resume=args.resume)
    if args.json:
        print(json.dumps({k: manifest[k] for k in ("dev_metrics", "trainable_params", "train_seconds", "steps")}))
        return 0
    best = manifest["dev_metrics"]["best"]
    params = ", ".join(f"{k} {v:,}" for k, v in manifest["trainable_params"].items())
    print(f"{args.mode} artifact written to {out}: trainable parameters {params} "
          f"({manifest['trainable_percent_of_lm']}% of the LM); {manifest['steps']} steps in "
          f"{manifest['train_seconds'] / 60:.1f} min ({manifest['seconds_per_step']} s/step); dev score "
          f"{best['score']:.1f} at step {best['step']}; backbone hash unchanged ({manifest['backbone_hash'][:12]}), "
          f"encoder hash unchanged ({manifest['encoder_hash'][:12]})")
    return 0


def _run_flags(t, what: str) -> None:
    """The flags every trainer has beside its settings."""
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.work/")
    t.add_argument("--quick", action="store_true", help=f"a smoke run: {what}")


def register(sub) -> None:
    from odqa.configs import (RECURSIVE_MODES, IDPTTrainConfig, ReaderTrainConfig, RecursiveTrainConfig,
                              RerankerTrainConfig)

    train = sub.add_parser("train", help="train a small module around the frozen LM").add_subparsers(
        dest="train_cmd", required=True)

    t = train.add_parser("reader", help="prompt-tune the frozen reader: a soft prompt, the backbone frozen")
    t.add_argument("--pipeline", default=str(DEFAULT_PIPELINE),
                   help="its retrievers, re-ranker and packer make the training contexts; its reader is tuned")
    t.add_argument("--train", required=True, help="training questions: a bundled set (e.g. trivia-wiki:train), "
                   "odqa/DPR/NQ-open jsonl or DPR json")
    t.add_argument("--dev", default="fanoutqa-wiki:dev", help="dev questions for EM and early stopping")
    t.add_argument("--out", required=True, help="artifact dir, e.g. pipelines/artifacts/reader-prompt-smollm2-synthetic")
    ReaderTrainConfig.add_flags(t)
    _run_flags(t, "2 steps of 2 questions, 3 dev questions")
    t.set_defaults(func=cmd_train_reader)

    t = train.add_parser("reranker", help="train the cross-encoder re-ranker (a LoRA adapter on a frozen encoder)")
    t.add_argument("--pipeline", default=str(DEFAULT_PIPELINE),
                   help="its retrieval stages give the dev candidates; its packer the LM-input recall")
    t.add_argument("--train", required=True, nargs="+", help="questions: a bundled set (e.g. trivia-wiki:train) "
                   "or a jsonl file of questions and answers, each grouped with the pipeline's own retrieved candidates "
                   "(see --labels); or jsonl files of training examples with positives and hard negatives (several are "
                   "trained on together)")
    t.add_argument("--dev", default="fanoutqa-wiki:dev", help="dev questions: fanoutqa-wiki:dev or a .jsonl file")
    t.add_argument("--out", required=True, help="artifact dir, e.g. pipelines/artifacts/reranker-minilm-synthetic")
    RerankerTrainConfig.add_flags(t)
    _run_flags(t, "3 steps on 12 examples, 6 dev questions")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_reranker)

    t = train.add_parser("recursive", help="closed-book QA: the one-pass prompt, or a second pass through the "
                                           "same frozen LM (textual or neural recursion)")
    t.add_argument("--mode", required=True, choices=RECURSIVE_MODES,
                   help="one-pass: the closed-book soft prompt; textual: pass 2 reads sampled candidates; "
                        "neural: a connector maps pass 1's hidden states into pass 2")
    t.add_argument("--model", default="smollm2-135m-instruct", help="frozen backbone (e.g. gemma3-270m)")
    t.add_argument("--train", default="fanoutqa-closedbook:train", help="training questions (set or .jsonl)")
    t.add_argument("--dev", default="fanoutqa-closedbook:dev", help="dev questions for EM and early stopping")
    t.add_argument("--out", required=True, help="artifact dir, e.g. pipelines/artifacts/recursive-neural-smollm2")
    t.add_argument("--first-prompt", default=None, help="textual/neural: pass 1's soft prompt (a one-pass artifact)")
    t.add_argument("--connector", default=None, help="neural: the LM-pre-trained connector artifact; reused if it "
                   "exists, else pre-trained and written there (default: OUT's dir/connector-lm-MODEL)")
    RecursiveTrainConfig.add_flags(t)
    _run_flags(t, "2 steps of 2 questions, 3 dev questions")
    t.set_defaults(func=cmd_train_recursive)

    t = train.add_parser("idpt", help="multitask: the ID-PT prompt generator, or the plain-prompt / full "
                                      "fine-tuning baselines, on the same data and step budget")
    t.add_argument("--data", default="data/multitask/wiki-mixture",
                   help="mixture dir with train/dev jsonl (odqa data multitask), or a `datasets` save_to_disk dir")
    t.add_argument("--train", default=None, help="override: a P3/T0-style jsonl of training examples")
    t.add_argument("--dev", default=None, help="override: a P3/T0-style jsonl of dev examples")
    t.add_argument("--task-name", default=None, help="task name for records without a 'task' field")
    t.add_argument("--model", default="smollm2-135m-instruct", help="the frozen backbone")
    t.add_argument("--out", default=None, help="artifact dir (finetune default: $ODQA_HOME/finetuned/NAME, "
                                               "never inside the repo)")
    IDPTTrainConfig.add_flags(t)
    _run_flags(t, "2 steps of 2 examples, 1 dev example per task")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_idpt)
