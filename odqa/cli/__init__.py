"""The ``odqa`` command.

    odqa index build --corpus wiki-vital --out indexes/wiki-vital
    odqa index export --to qdrant --index indexes/wiki-vital --path indexes/wiki-vital-qdrant
    odqa index build --corpus psgs_w100.tsv --out indexes/dpr-wiki --engine ray [--address auto|HOST:PORT]
                     [--num-encoders N] [--gpus-per-encoder G]
    odqa ask "Who wrote Romeo and Juliet?"
    odqa run pipelines/frozen_reader.yml --question "..." [--json]
    odqa run pipelines/frozen_reader.yml --questions FILE.jsonl --out answers.jsonl
    odqa eval --pipeline pipelines/frozen_reader.yml --questions fanoutqa-wiki:test --out eval/runs/NAME
    odqa eval --pipeline PIPELINE.yml --questions nq-test.csv --out eval/runs/NAME --engine ray [--num-actors N]
    odqa eval retrieval --results dpr_results.json [--out DIR] [--k 1,5,20,100] [--json]
    odqa train reranker --train data/synthetic/cloze-wiki-vital.train.jsonl --out pipelines/artifacts/NAME
    odqa data cloze --corpus wiki-vital --out data/synthetic/cloze-wiki-vital.jsonl --index indexes/wiki-vital
    odqa data negatives --train nq-train.jsonl --index indexes/wiki-vital --out data/nq-train-mined.jsonl
    odqa data multitask --out data/multitask/wiki-mixture
    odqa train idpt --mode idpt|prompt|finetune --data data/multitask/wiki-mixture [--out DIR]
    odqa eval idpt --idpt DIR --soft-prompt DIR --finetuned DIR --out eval/runs/idpt
    odqa run --pipeline pipelines/idpt_multitask.yml --question "TEXT" --task topic
    odqa demo
    odqa serve pipelines/frozen_reader.yml [PIPELINE.yml ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Errors print one line (``error: ...``) and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import odqa  # noqa: F401 - sets the offline defaults before anything else loads
from odqa.cli import ask, data, index, serve, train
from odqa.cli import eval as eval_cli
from odqa.errors import OdqaError, from_os_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="odqa", description="Open-domain QA on a frozen language model.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    for family in (index, ask, eval_cli, train, data, serve):  # one module per family of commands
        family.register(sub)
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
                code = args.func(args)
        else:
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at interpreter exit
        return code
    except OdqaError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`odqa ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
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
