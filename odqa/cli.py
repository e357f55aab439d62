"""The ``odqa`` command.

    odqa index build --corpus wiki-vital --out indexes/wiki-vital
    odqa ask "Who wrote Romeo and Juliet?"
    odqa run pipelines/frozen_reader.yml --question "..." [--json]
    odqa run pipelines/frozen_reader.yml --questions FILE.jsonl --out answers.jsonl
    odqa eval --pipeline pipelines/frozen_reader.yml --questions fanoutqa-wiki:test --out eval/runs/NAME
    odqa eval merge RUN_DIR... --out RUN_DIR
    odqa eval retrieval --results dpr_results.json [--out DIR] [--k 1,5,20,100] [--json]
    odqa train reranker --train data/synthetic/cloze-wiki-vital.train.jsonl --out pipelines/artifacts/NAME
    odqa data cloze --corpus wiki-vital --out data/synthetic/cloze-wiki-vital.jsonl --index indexes/wiki-vital
    odqa data negatives --train nq-train.jsonl --index indexes/wiki-vital --out data/nq-train-mined.jsonl
    odqa data multitask --out data/multitask/wiki-mixture
    odqa train idpt --mode idpt|prompt|finetune --data data/multitask/wiki-mixture [--out DIR]
    odqa eval idpt --idpt DIR --soft-prompt DIR --finetuned DIR --out eval/runs/idpt
    odqa run --pipeline pipelines/idpt_multitask.yml --question "TEXT" --task topic
    odqa demo

Errors print one line (``error: ...``) and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import odqa  # noqa: F401 - sets the offline defaults before anything else loads
from odqa.errors import BadQuestionError, OdqaError, from_os_error

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

    from odqa.api import FailedAnswer
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
        with RunWriter(out) as writer:
            for q in tqdm(todo, desc="answering", unit="q"):
                try:
                    result = ask(q.question)
                except BadQuestionError as e:  # one bad question does not stop the batch
                    failed += 1
                    result = FailedAnswer(q.question, e)
                writer.write({"id": q.id, "answers": q.answers, **result.to_dict()})
    note = f" ({failed} could not be answered; see their 'error' field)" if failed else ""
    print(f"wrote {len(questions)} answers to {out}{note}", file=sys.stderr)
    return 0


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
    if args.results or args.k:
        raise OdqaError("--results and --k belong to `odqa eval retrieval --results FILE`")
    if not args.out:
        raise OdqaError("odqa eval needs --out DIR, the run directory (e.g. --out eval/runs/NAME)")
    out = Path(args.out)
    if args.rest and args.rest[0] == "merge":
        if len(args.rest) < 2:
            raise OdqaError("odqa eval merge needs the shard run directories: odqa eval merge DIR... --out DIR")
        metrics = evaluation.merge([Path(d) for d in args.rest[1:]], out)
    elif args.rest:
        raise OdqaError(f"unknown eval action '{args.rest[0]}'; use `odqa eval --pipeline ...`, `odqa eval merge`, "
                        "`odqa eval retrieval` or `odqa eval idpt`")
    else:
        if not args.pipeline or not args.questions:
            raise OdqaError("odqa eval needs --pipeline and --questions")
        import odqa as api
        from odqa.data.questions import load_questions

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


def cmd_train_reader(args) -> int:
    from odqa.data.questions import load_questions
    from odqa.data.negatives import read_training_data
    from odqa.training.reader import ReaderTrainConfig, train_reader

    examples = read_training_data(args.train)
    train = [{"id": e.id, "question": e.question, "answers": e.answers} for e in examples]
    dev = [{"id": q.id, "question": q.question, "answers": q.answers}
           for q in load_questions(args.dev, require_answers=True)]
    synthetic = bool(examples) and all(e.synthetic for e in examples)
    config = ReaderTrainConfig(
        prompt_length=args.prompt_length, template=args.template, max_examples=args.max_examples,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        eval_every=args.eval_every, save_every=args.save_every, patience=args.patience,
        dev_limit=args.dev_limit, seed=args.seed)
    if args.quick:  # a smoke run: a few steps on a few questions (used by the slow test)
        config.max_examples, config.max_steps, config.eval_every, config.batch_size = 4, 2, 2, 2
        config.dev_limit = min(config.dev_limit or 3, 3)
    source = {"train": str(args.train), "synthetic": synthetic,
              "kind": "synthetic cloze QA from the corpus" if synthetic else "real questions"}
    manifest = train_reader(args.pipeline, train, dev, args.out, config, source, resume=args.resume)
    best = manifest["dev_metrics"]["best"]
    print(f"soft prompt written to {args.out}: {manifest['length']} vectors, {manifest['steps']} steps in "
          f"{manifest['train_seconds'] / 60:.1f} min; dev EM {best['em']:.1f} F1 {best['f1']:.1f} at step "
          f"{best['step']} ({best['questions']} questions); backbone hash unchanged ({manifest['backbone_hash'][:12]})")
    return 0


def cmd_train_recursive(args) -> int:
    from odqa.data.questions import dedup, load_questions
    from odqa.training.recursive import RecursiveTrainConfig, train_recursive

    def items(spec: str) -> list[dict]:
        return [{"id": q.id, "question": q.question, "answers": q.answers}
                for q in dedup(load_questions(spec, require_answers=True))]

    if args.no_pretrain and args.mode != "neural":
        raise OdqaError("--no-pretrain applies to --mode neural only (the connector's pre-training)")
    config = RecursiveTrainConfig(
        prompt_length=args.prompt_length, max_examples=args.max_examples, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=args.lr, connector_lr=args.connector_lr, eval_every=args.eval_every,
        patience=args.patience, dev_limit=args.dev_limit, seed=args.seed, num_candidates=args.num_candidates,
        temperature=args.temperature, top_p=args.top_p, bottleneck=args.bottleneck, pretrain=not args.no_pretrain,
        pretrain_steps=args.pretrain_steps)
    if args.quick:  # a smoke run (used by the slow tests): a few steps on a few questions
        config.max_examples, config.max_steps, config.eval_every, config.batch_size = 4, 2, 2, 2
        config.dev_limit, config.pretrain_steps, config.pretrain_dev_chunks = 3, 2, 2
        config.num_candidates, config.max_new_tokens = min(config.num_candidates, 2), 8
    train = items(args.train)
    source = {"train": f"real: {args.train}", "synthetic": False, "kind": "real questions (closed-book)"}
    manifest = train_recursive(args.mode, args.model, train, items(args.dev), args.out, config, source,
                               first_prompt=args.first_prompt, connector_dir=args.connector, resume=args.resume)
    best = manifest["dev_metrics"]["best"]
    print(f"{args.mode} artifact written to {args.out}: {manifest['trainable_params']:,} trainable parameters, "
          f"{manifest['steps']} steps in {manifest['train_seconds'] / 60:.1f} min; dev EM {best['em']:.1f} "
          f"F1 {best['f1']:.1f} at step {best['step']} ({best['questions']} questions); backbone hash unchanged "
          f"({manifest['backbone_hash'][:12]})")
    return 0


def cmd_demo(args) -> int:
    import odqa as api

    qa = api.load(args.pipeline)
    print(f"pipeline: {args.pipeline}\n")
    for question, expected in DEMO_QUESTIONS:
        _print_answer(qa.ask(question), False, expected)
        print()
    return 0


def cmd_train_reranker(args) -> int:
    from odqa.training.reranker import RerankerTrainConfig, metrics_table, train_reranker

    config = RerankerTrainConfig(
        base=args.base, epochs=args.epochs, max_steps=args.max_steps, batch_questions=args.batch_questions,
        negatives=args.negatives, lr=args.lr, lora_r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r,
        max_examples=args.max_examples, eval_every=args.eval_every, save_every=args.save_every,
        patience=args.patience, dev_limit=args.dev_limit, dev_candidates=args.dev_candidates, seed=args.seed)
    if args.quick:  # a smoke run: a few steps, a few dev questions (used by the slow test)
        config.max_steps = min(config.max_steps or 3, 3)
        config.max_examples = min(config.max_examples or 12, 12)
        config.dev_limit = min(config.dev_limit or 6, 6)
        config.dev_candidates = min(config.dev_candidates or 30, 30)
    result = train_reranker(args.pipeline, args.train, args.dev, args.out, config, resume=args.resume)
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


def _synthetic_name(out: Path) -> str:
    """The file stem for synthetic data: ``out``'s, with "synthetic" added when it lacks it."""
    if out.suffix != ".jsonl":
        raise OdqaError(f"--out '{out}' must name a .jsonl file, e.g. data/synthetic/cloze-wiki-vital.jsonl")
    return out.stem if "synthetic" in out.stem.lower() else f"{out.stem}-synthetic"


def _print_mining(stats: dict) -> None:
    print(f"hard negatives: {stats['kept']} of {stats['examples']} examples kept, "
          f"{stats['mean_negatives']} negatives each on average ({stats['short_of_negatives']} with fewer than "
          f"asked), {stats['positives_mined']} positives found by retrieval, "
          f"{stats['dropped_no_positive']} dropped for want of a passage with the answer")


def cmd_data_cloze(args) -> int:
    import time
    from collections import Counter

    from odqa.data.corpus import read_corpus
    from odqa.errors import TrainingDataError
    from odqa.data.cloze import KINDS, add_noise, cloze_split, make_cloze
    from odqa.data.negatives import mine_hard_negatives, write_training_data

    out = Path(args.out)
    stem = _synthetic_name(out)
    if args.index is None and args.negatives is not None:
        raise OdqaError("--negatives needs --index DIR, the index to mine hard negatives from")
    start = time.time()
    passages = read_corpus(args.corpus)
    corpus_name = args.corpus if args.corpus == "wiki-vital" else Path(args.corpus).stem
    examples = make_cloze(passages, args.n, seed=args.seed, per_passage=args.per_passage, corpus_name=corpus_name)
    if not examples:
        raise TrainingDataError(f"corpus '{args.corpus}' gave no cloze questions; it needs sentences with dates, "
                                "numbers or names")
    if args.noise is not None:
        if not 0.0 <= args.noise <= 1.0:
            raise OdqaError(f"--noise must be between 0 and 1 (the share of words kept), got {args.noise}")
        examples = add_noise(examples, keep=args.noise, seed=args.seed)
    stats = None
    if args.index:
        examples, stats = mine_hard_negatives(examples, args.index, n=args.negatives or 8, depth=args.depth)
    counts: dict[str, Counter] = {}
    for split in ("train", "dev"):
        part = [e for e in examples if cloze_split(e) == split]
        if not part:  # a tiny corpus can leave a split empty; an empty file would only fail later
            print(f"{split}: 0 examples, no file written")
            continue
        path = write_training_data(out.with_name(f"{stem}.{split}.jsonl"), part)
        counts[split] = Counter(e.kind for e in part)
        print(f"{split}: {len(part)} synthetic examples -> {path}  ("
              + ", ".join(f"{k} {counts[split][k]}" for k in KINDS) + ")")
    if stats:
        _print_mining(stats)
    print(f"done in {time.time() - start:.0f} s")
    return 0


def cmd_data_negatives(args) -> int:
    from odqa.data.negatives import mine_hard_negatives, read_training_data, write_training_data

    from odqa.data.questions import is_question_set
    from odqa.data.negatives import examples_from_questions

    if is_question_set(args.train):
        examples, qstats = examples_from_questions(args.train, exclude=args.exclude)
        print(f"{args.train}: {len(examples)} of {qstats['questions']} questions kept ({qstats['excluded']} "
              f"excluded as in {args.exclude}, {qstats['unmatchable_answer']} with yes/no or short-number answers)")
    elif args.exclude:
        raise OdqaError("--exclude applies to a bundled question set given as --train (e.g. fanoutqa-closedbook:train)")
    else:
        examples = read_training_data(args.train)
    out = Path(args.out)
    if any(e.synthetic for e in examples) and "synthetic" not in out.name.lower():
        raise OdqaError(f"'{args.train}' holds synthetic examples; put 'synthetic' in the --out file name "
                        f"(e.g. {out.with_name(_synthetic_name(out) + '.jsonl')}) so it stays labelled")
    mined, stats = mine_hard_negatives(examples, args.index, n=args.negatives, depth=args.depth,
                                       encoder=args.encoder)
    write_training_data(out, mined)
    print(f"wrote {len(mined)} examples to {out}")
    _print_mining(stats)
    return 0


def cmd_data_multitask(args) -> int:
    from odqa.data.multitask import MixtureSizes, write_mixture

    sizes = MixtureSizes(train=args.train_per_task, dev=args.dev_per_task, test=args.test_per_task)
    manifest = write_mixture(args.out, sizes, seed=args.seed)
    for split, counts in manifest["counts"].items():
        print(f"{split}: " + ", ".join(f"{t} {n}" for t, n in counts.items()) + f" -> {Path(args.out) / split}.jsonl")
    print(f"held out (test only): {', '.join(manifest['held_out'])}")
    return 0


def cmd_train_idpt(args) -> int:
    from odqa.training.idpt import IDPTTrainConfig, default_finetune_out, train_idpt
    from odqa.data.multitask import read_multitask

    config = IDPTTrainConfig(
        mode=args.mode, prompt_length=args.prompt_length, encoder=args.encoder,
        encoder_prompt_length=args.encoder_prompt_length, attn_dim=args.attn_dim, heads=args.heads,
        max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, prompt_lr=args.prompt_lr,
        eval_every=args.eval_every, save_every=args.save_every, patience=args.patience,
        dev_per_task=args.dev_per_task, seed=args.seed)
    train = read_multitask(args.train or args.data, None if args.train else "train", args.task_name)
    dev = read_multitask(args.dev or args.data, None if args.dev else "dev", args.task_name)
    if args.quick:  # a smoke run (used by the slow test)
        config.max_steps, config.eval_every, config.batch_size, config.dev_per_task = 2, 2, 2, 1
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


def build_parser() -> argparse.ArgumentParser:
    from odqa.configs import BM25Config

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
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate a pipeline on a question set (NQ metrics, per stage), "
                                    "or score a DPR retrieval results file")
    e.add_argument("rest", nargs="*",
                   help="`merge DIR...` joins shard runs; `retrieval` scores a DPR results file (--results)")
    e.add_argument("--pipeline")
    e.add_argument("--questions", help="fanoutqa-wiki[:split], NQ-open .jsonl, or DPR nq-test .csv")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--out", help="run directory, e.g. eval/runs/NAME (a rerun resumes); "
                                 "optional for `eval retrieval`")
    e.add_argument("--results", help="for `eval retrieval`: DPR retriever output (JSON list of "
                                     "question/answers/ctxs)")
    e.add_argument("--k", default=None, help="for `eval retrieval`: comma-separated k, default 1,5,20,100")
    e.add_argument("--shards", type=int, default=1)
    e.add_argument("--shard", type=int, default=None)
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

    # `odqa train MODULE`: one parser per trained module, each writing an artifact dir
    train = sub.add_parser("train", help="train a small module around the frozen LM").add_subparsers(
        dest="train_cmd", required=True)
    t = train.add_parser("reranker", help="train the cross-encoder re-ranker (a LoRA adapter on a frozen encoder)")
    t.add_argument("--pipeline", default=str(DEFAULT_PIPELINE),
                   help="its retrieval stages give the dev candidates; its packer the LM-input recall")
    t.add_argument("--train", required=True, nargs="+", help="jsonl files of training examples with positives "
                   "and hard negatives (several are trained on together)")
    t.add_argument("--dev", default="fanoutqa-wiki:dev", help="dev questions: fanoutqa-wiki:dev or a .jsonl file")
    t.add_argument("--out", required=True, help="artifact dir, e.g. pipelines/artifacts/reranker-minilm-synthetic")
    t.add_argument("--base", default="minilm-l6", help="encoder or cross-encoder to adapt (name, path or HF id)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=None, help="stop after N steps (overrides --epochs)")
    t.add_argument("--batch-questions", type=int, default=4, help="questions per step")
    t.add_argument("--negatives", type=int, default=7, help="hard negatives per question")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--lora-alpha", type=int, default=None, help="default: 2 x --lora-r")
    t.add_argument("--max-examples", type=int, default=None, help="train on a seeded random subset of N examples")
    t.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations (default: per epoch)")
    t.add_argument("--save-every", type=int, default=25, help="steps between checkpoints")
    t.add_argument("--patience", type=int, default=2, help="dev evaluations without a better MRR before stopping")
    t.add_argument("--dev-limit", type=int, default=None, help="use only the first N dev questions")
    t.add_argument("--dev-candidates", type=int, default=None, help="re-rank only the first N candidates")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.work/")
    t.add_argument("--quick", action="store_true", help="a smoke run: 3 steps, 6 dev questions")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_reranker)

    from odqa.configs import ReaderTrainConfig

    rd = ReaderTrainConfig()
    t = train.add_parser("reader", help="prompt-tune the frozen reader: a soft prompt, the backbone frozen")
    t.add_argument("--pipeline", default=str(DEFAULT_PIPELINE),
                   help="its retrievers, re-ranker and packer make the training contexts; its reader is tuned")
    t.add_argument("--train", required=True, help="training questions: odqa/DPR/NQ-open jsonl or DPR json")
    t.add_argument("--dev", default="fanoutqa-wiki:dev", help="dev questions for EM and early stopping")
    t.add_argument("--out", required=True, help="artifact dir, e.g. pipelines/artifacts/reader-prompt-smollm2-synthetic")
    t.add_argument("--prompt-length", type=int, default=rd.prompt_length, help="soft prompt vectors")
    t.add_argument("--template", default=rd.template, help="the tuned reader's template (default: bare 'qa')")
    t.add_argument("--max-examples", type=int, default=rd.max_examples, help="seeded random subset of the train file")
    t.add_argument("--epochs", type=int, default=rd.epochs)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=rd.batch_size)
    t.add_argument("--lr", type=float, default=rd.lr, help="AdamW learning rate of the prompt")
    t.add_argument("--eval-every", type=int, default=rd.eval_every, help="steps between dev evaluations")
    t.add_argument("--save-every", type=int, default=rd.save_every, help="steps between checkpoints")
    t.add_argument("--patience", type=int, default=rd.patience, help="dev evaluations without a better EM")
    t.add_argument("--dev-limit", type=int, default=None, help="use only the first N dev questions")
    t.add_argument("--seed", type=int, default=rd.seed)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.work/")
    t.add_argument("--quick", action="store_true", help="a smoke run: 2 steps of 2 questions, 3 dev questions")
    t.set_defaults(func=cmd_train_reader)

    from odqa.configs import RECURSIVE_MODES, RecursiveTrainConfig

    rc = RecursiveTrainConfig()
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
    t.add_argument("--no-pretrain", action="store_true", help="neural: skip the connector's LM pre-training (ablation)")
    t.add_argument("--prompt-length", type=int, default=rc.prompt_length, help="soft prompt vectors")
    t.add_argument("--max-examples", type=int, default=rc.max_examples)
    t.add_argument("--epochs", type=int, default=rc.epochs)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=rc.batch_size)
    t.add_argument("--lr", type=float, default=rc.lr, help="AdamW learning rate of the soft prompt")
    t.add_argument("--connector-lr", type=float, default=rc.connector_lr)
    t.add_argument("--eval-every", type=int, default=rc.eval_every)
    t.add_argument("--patience", type=int, default=rc.patience)
    t.add_argument("--dev-limit", type=int, default=rc.dev_limit, help="first N dev questions (0: all)")
    t.add_argument("--num-candidates", type=int, default=rc.num_candidates, help="textual: samples in pass 1")
    t.add_argument("--temperature", type=float, default=rc.temperature, help="textual: pass-1 sampling temperature")
    t.add_argument("--top-p", type=float, default=rc.top_p, help="textual: pass-1 nucleus sampling mass")
    t.add_argument("--bottleneck", type=int, default=rc.bottleneck, help="neural: the connector MLP's width")
    t.add_argument("--pretrain-steps", type=int, default=rc.pretrain_steps)
    t.add_argument("--seed", type=int, default=rc.seed)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.work/")
    t.add_argument("--quick", action="store_true", help="a smoke run: 2 steps of 2 questions, 3 dev questions")
    t.set_defaults(func=cmd_train_recursive)

    from odqa.configs import IDPT_MODES, IDPTTrainConfig

    ic = IDPTTrainConfig()
    t = train.add_parser("idpt", help="multitask: the ID-PT prompt generator, or the plain-prompt / full "
                                      "fine-tuning baselines, on the same data and step budget")
    t.add_argument("--mode", default="idpt", choices=IDPT_MODES,
                   help="idpt: train only the prompt generator; prompt: one shared soft prompt; finetune: a copy "
                        "of the backbone (saved outside the repo)")
    t.add_argument("--data", default="data/multitask/wiki-mixture",
                   help="mixture dir with train/dev jsonl (odqa data multitask), or a `datasets` save_to_disk dir")
    t.add_argument("--train", default=None, help="override: a P3/T0-style jsonl of training examples")
    t.add_argument("--dev", default=None, help="override: a P3/T0-style jsonl of dev examples")
    t.add_argument("--task-name", default=None, help="task name for records without a 'task' field")
    t.add_argument("--model", default="smollm2-135m-instruct", help="the frozen backbone")
    t.add_argument("--out", default=None, help="artifact dir (finetune default: $ODQA_HOME/finetuned/NAME, "
                                               "never inside the repo)")
    t.add_argument("--encoder", default=ic.encoder, help="idpt: the frozen encoder (a T5 id uses T5EncoderModel)")
    t.add_argument("--prompt-length", type=int, default=ic.prompt_length, help="P: prompt vectors")
    t.add_argument("--encoder-prompt-length", type=int, default=ic.encoder_prompt_length, help="Q: encoder prompt")
    t.add_argument("--attn-dim", type=int, default=ic.attn_dim)
    t.add_argument("--heads", type=int, default=ic.heads)
    t.add_argument("--max-steps", type=int, default=ic.max_steps, help="the step budget (same for every mode)")
    t.add_argument("--batch-size", type=int, default=ic.batch_size)
    t.add_argument("--lr", type=float, default=None, help="idpt: cross-attention network (default 1e-4); "
                                                          "finetune: all weights (3e-5)")
    t.add_argument("--prompt-lr", type=float, default=ic.prompt_lr, help="prompt vectors (plain prompt, idpt's "
                                                                        "encoder prompt and output bias)")
    t.add_argument("--eval-every", type=int, default=ic.eval_every)
    t.add_argument("--save-every", type=int, default=ic.save_every)
    t.add_argument("--patience", type=int, default=ic.patience)
    t.add_argument("--dev-per-task", type=int, default=ic.dev_per_task)
    t.add_argument("--seed", type=int, default=ic.seed)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.work/")
    t.add_argument("--quick", action="store_true", help="a smoke run: 2 steps of 2 examples, 1 dev example per task")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_idpt)

    # `odqa data ...`: training data (synthetic cloze QA, hard negatives); written under data/, not committed
    data = sub.add_parser("data", help="build training data: synthetic cloze QA, hard negatives").add_subparsers(
        dest="data_cmd", required=True)
    dc = data.add_parser("cloze", help="synthetic cloze QA from a corpus (Lewis et al., 2019), split train/dev")
    dc.add_argument("--corpus", default="wiki-vital", help="wiki-vital, a DPR psgs_w100.tsv file, or a .jsonl file")
    dc.add_argument("--out", required=True, help="e.g. data/synthetic/cloze-wiki-vital.jsonl: writes "
                                                 "STEM.train.jsonl and STEM.dev.jsonl beside it ('synthetic' is "
                                                 "added to STEM when it lacks it)")
    dc.add_argument("--n", type=int, default=4000, help="examples to make, at most")
    dc.add_argument("--seed", type=int, default=0)
    dc.add_argument("--per-passage", type=int, default=2, help="examples from one passage, at most")
    dc.add_argument("--noise", type=float, default=None, help="noisy cloze (Lewis et al. 2019): keep each word "
                    "other than the wh-phrase and the title's with this probability, at most 10 words")
    dc.add_argument("--index", default=None, help="mine hard negatives from this index (e.g. indexes/wiki-vital)")
    dc.add_argument("--negatives", type=int, default=None, help="hard negatives per example (default 8; needs --index)")
    dc.add_argument("--depth", type=int, default=50, help="BM25 and dense results read per question")
    dc.set_defaults(func=cmd_data_cloze)
    dn = data.add_parser("negatives", help="add positives and hard negatives to DPR / NQ-open / odqa training data")
    dn.add_argument("--train", required=True, help="DPR training .json, NQ-open .jsonl, odqa .jsonl, or a "
                    "bundled question set such as fanoutqa-closedbook:train (real questions; positives mined)")
    dn.add_argument("--exclude", default=None, help="with a bundled question set: leave out the questions of "
                    "this set, e.g. fanoutqa-wiki to keep the benchmark out of training")
    dn.add_argument("--index", required=True, help="index to retrieve from, e.g. indexes/wiki-vital")
    dn.add_argument("--out", required=True, help="odqa jsonl to write")
    dn.add_argument("--negatives", type=int, default=8, help="hard negatives per example")
    dn.add_argument("--depth", type=int, default=50, help="BM25 and dense results read per question")
    dn.add_argument("--encoder", default=None, help="dense encoder (default: the index's own)")
    dn.set_defaults(func=cmd_data_negatives)
    dm = data.add_parser("multitask", help="the bundled multitask mixture for ID-PT (5 task kinds, one held out)")
    dm.add_argument("--out", default="data/multitask/wiki-mixture", help="dir for train/dev/test jsonl + manifest")
    dm.add_argument("--train-per-task", type=int, default=300)
    dm.add_argument("--dev-per-task", type=int, default=24)
    dm.add_argument("--test-per-task", type=int, default=60)
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=cmd_data_multitask)

    d = sub.add_parser("demo", help="answer a few sample questions")
    d.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    from odqa.artifacts import set_command

    set_command(argv)  # manifests record the command that made them
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # an error after a model load must still be one line
    hf_logging.set_verbosity_error()
    try:
        if args.cmd == "train" and getattr(args, "out", None):  # one trainer per artifact at a time
            from odqa.runs import OutputLock

            with OutputLock(args.out):
                return args.func(args)
        return args.func(args)
    except OdqaError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # permissions, a full disk, a missing directory: the user can fix these
        if args.debug:
            raise
        err = from_os_error(e)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
