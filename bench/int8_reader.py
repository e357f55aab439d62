"""Int8 schemes for the reader, side by side on the same packed contexts: EM against float32
(paired, 95% interval), how many answers are unchanged, and the reader's median time.

Each question goes through the pipeline once (float32) for its packed passages; every reader
variant then reads those same passages, round-robin per question, so load from other processes
hits all variants alike. Two warm-up questions are not timed. Variants:

- ``float32``: the pipeline's reader as configured;
- ``torch.ao dynamic``: torch's eager ``quantize_dynamic`` with per-channel weight scales
  (activations scaled per tensor), every linear layer but the output head;
- ``odqa int8``: ``quantize: int8`` (odqa.lm.quantization: per-token activation scales; the MLP
  down projections float);
- ``odqa int8, down_proj too``: every linear layer int8, the head included;
- ``--keep-float NAME=PATTERN,...`` (repeatable): more int8 variants, the modules whose full names
  match the ``fnmatch`` patterns left float (e.g. ``"layer 0 float=model.layers.0.*,*down_proj"``).

    python bench/int8_reader.py --pipeline pipelines/frozen_reader.yml --questions trivia-wiki:dev --limit 120 \
        --keep-float "head and down_proj float=lm_head,*down_proj" --keep-float "layer 0 float=model.layers.0.*"
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import odqa
from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)
from odqa.components.readers import FrozenLMReader
from odqa.data.questions import dedup, load_questions
from odqa.lm.quantization import quantize_int8
from odqa.metrics import exact_match, paired_bootstrap

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2


def torch_ao_dynamic(model):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    head = model.get_output_embeddings()
    spec = {name: per_channel_dynamic_qconfig for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}
    return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def int8_keeping(patterns: tuple[str, ...]):
    def transform(model):
        quantize_int8(model, keep_float=patterns)
        return model
    return transform


def variant(settings: dict, tag: str, transform) -> FrozenLMReader:
    """A reader on a transformed copy of the float backbone (its own prefix cache key)."""
    reader = FrozenLMReader(**settings)
    reader.warm_up()
    model = transform(copy.deepcopy(reader._backbone.model))
    reader._backbone = dataclasses.replace(reader._backbone, model=model)
    if reader._prefix_key is not None:
        reader._prefix_key = reader._prefix_key + (tag,)
    return reader


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines/frozen_reader.yml"))
    ap.add_argument("--questions", default="trivia-wiki:dev")
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--keep-float", action="append", default=[], metavar="NAME=PATTERN,...",
                    help="another int8 variant: these modules left float")
    ap.add_argument("--out", default=str(ROOT / "bench/results/int8_reader.md"))
    args = ap.parse_args()

    qa = odqa.load(args.pipeline)
    base = qa.pipeline.get_component(qa.reader)
    settings = {k: v for k, v in base.to_dict()["init_parameters"].items() if k != "quantize"}
    readers = {"float32": FrozenLMReader(**settings),
               "torch.ao dynamic": variant(settings, "torch-ao", torch_ao_dynamic),
               "odqa int8": FrozenLMReader(**settings, quantize="int8"),
               "odqa int8, down_proj too": variant(settings, "int8-down", int8_keeping(()))}
    for spec in args.keep_float:
        name, _, patterns = spec.partition("=")
        readers[name] = variant(settings, name, int8_keeping(tuple(p for p in patterns.split(",") if p)))
    questions = dedup(load_questions(args.questions, require_answers=True))[: args.limit + WARMUP]
    em = {name: [] for name in readers}
    answers = {name: [] for name in readers}
    ms = {name: [] for name in readers}
    for i, q in enumerate(tqdm(questions, desc="reading", unit="q")):
        _, out = qa.ask_with_outputs(q.question, every_stage=False)
        docs = out[qa.packer]["documents"] if qa.packer else []
        for name, reader in readers.items():
            start = time.perf_counter()
            text = reader.run(query=q.question, documents=docs)["answers"][0].data or ""
            if i >= WARMUP:
                ms[name].append(1000 * (time.perf_counter() - start))
                em[name].append(100 * exact_match(text, q.answers))
                answers[name].append(text)
    n = len(em["float32"])
    head = ["reader", "EM", "EM − float32 [95% CI]", "answers = float32's", "median reader ms", "speed-up"]
    lines = ["# Int8 schemes for the reader", "",
             f"`{command()}`", "",
             f"{n} questions of `{args.questions}`, the passages of `{Path(args.pipeline).name}`; backbone "
             f"{base.model}, {torch.get_num_threads()} threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_ms = statistics.median(ms["float32"])
    for name in readers:
        d = paired_bootstrap(em["float32"], em[name])
        same = sum(a == b for a, b in zip(answers[name], answers["float32"]))
        med = statistics.median(ms[name])
        ci = "–" if name == "float32" else f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
        lines.append(f"| {name} | {sum(em[name]) / n:.1f} | {ci} | {same}/{n} | {med:.0f} | {ref_ms / med:.2f}× |")
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
