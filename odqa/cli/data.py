"""``odqa data``: training data (synthetic cloze QA, hard negatives, the multitask mixture),
written under data/, not committed."""

from __future__ import annotations

from pathlib import Path

from odqa.errors import OdqaError


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


def register(sub) -> None:
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
