"""Reader latency with and without the prefix KV cache (SmolLM2-135M-Instruct, greedy, CPU).

The soft prompt's and the template prefix's keys and values are the same for every question, so
the reader computes them once per process (:mod:`odqa.lm.generation`). This times
``FrozenLMReader.run`` on real questions and the passages the default pipeline retrieves for them:

- ``qa-completion`` (instruction + 3 worked examples, no soft prompt), prefix cache off / on;
- ``qa`` (bare template) after the shipped trained 100-vector soft prompt (or, with
  ``--soft-prompt random``, an untrained one from ``SoftPrompt.from_vocab``), prefix cache off / on.

Passages come from the pipeline's retrieval (and re-ranker, if it has one): the documents its
packer receives are packed again by a ``ContextPacker`` with each reader's own settings, so a
reader with a cache and one without read exactly the same passages. Readers run round-robin on
each question, so load from other processes hits all rows alike; each reader first answers 2
warm-up questions that are not timed. It also counts how many answers the cached reader gives
identically to the uncached one (they should all be).

    python bench/reader_latency.py --limit 20
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import odqa
from odqa.components import ContextPacker, FrozenLMReader
from odqa.lm.backbone import load_backbone
from odqa.lm.generation import PrefixCache
from odqa.lm.prompting import encode_prefix, get_template
from odqa.lm.soft_prompt import SoftPrompt
from odqa.data.questions import load_questions

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
WARMUP = 2


def random_soft_prompt(out_dir: Path, length: int, seed: int = 0) -> str:
    """A soft prompt initialised from ``length`` random vocabulary embeddings (untrained: for timing only)."""
    embedding = load_backbone(MODEL).model.get_input_embeddings()
    ids = torch.randint(0, embedding.num_embeddings, (length,), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        prompt = SoftPrompt.from_vocab(embedding, ids)
    return str(prompt.save(out_dir / "soft_prompt", {"backbone": MODEL, "note": "random, for bench/reader_latency.py"}))


def prefix_build_ms(template: str, soft_prompt: str | None) -> float:
    """Time one :class:`PrefixCache` build (the reader's own is shared, and may already exist)."""
    backbone = load_backbone(MODEL)
    soft = SoftPrompt.load(soft_prompt, MODEL, backbone.hidden_size).eval() if soft_prompt else None
    prefix_ids = encode_prefix(backbone.tokenizer, get_template(template))
    t = time.perf_counter()
    PrefixCache.build(backbone.model, soft, prefix_ids)
    return 1000 * (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default="fanoutqa-wiki:dev")
    ap.add_argument("--limit", type=int, default=60, help="questions to time (after the warm-up ones)")
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "frozen_reader.yml"))
    ap.add_argument("--soft-prompt", default=str(ROOT / "pipelines" / "artifacts" / "reader-prompt-smollm2-synthetic"),
                    help="the soft prompt of the qa rows (default: the shipped trained one); 'random' for an untrained one")
    ap.add_argument("--soft-prompt-length", type=int, default=100, help="length of a random soft prompt")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, one per core); on a shared machine 1 avoids "
                         "thread oversubscription, which inflates times several-fold")
    ap.add_argument("--note", default="", help="a line for the report, e.g. the load on the machine")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reader_latency.md"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    questions = load_questions(args.questions)[: args.limit + WARMUP]
    qa = odqa.load(args.pipeline)
    if qa.packer is None:
        sys.exit(f"{args.pipeline} has no ContextPacker; give a pipeline with one")
    feeder = next(iter(qa.pipeline.graph.predecessors(qa.packer)))  # the join, or the re-ranker if there is one
    ranked = []  # (question, the documents the pipeline's packer receives, best first)
    for q in tqdm(questions, desc="retrieving"):
        _, out = qa.ask_with_outputs(q.question)
        ranked.append((q.question, out[feeder]["documents"]))
    default_reader = qa.pipeline.get_component(qa.reader)
    window = dict(context_length=default_reader.context_length, max_new_tokens=default_reader.max_new_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        if args.soft_prompt == "random":
            soft, soft_label = random_soft_prompt(Path(tmp), args.soft_prompt_length), f"{args.soft_prompt_length} random"
        else:
            from odqa.lm.soft_prompt import soft_prompt_length

            soft, args.soft_prompt_length = args.soft_prompt, soft_prompt_length(args.soft_prompt)
            soft_label = f"{args.soft_prompt_length} trained"
        settings = [
            ("qa-completion", None, False), ("qa-completion", None, True),
            ("qa", soft, False), ("qa", soft, True),
        ]
        readers, packed, build_ms = [], [], []
        for template, soft_prompt, cache in settings:
            # each reader reads what a packer with its own settings keeps (the soft prompt takes room too)
            packer = ContextPacker(model=MODEL, template=template, soft_prompt=soft_prompt, **window)
            packed.append([packer.run(query=q, documents=docs)["documents"] for q, docs in ranked])
            build_ms.append(prefix_build_ms(template, soft_prompt) if cache else None)
            reader = FrozenLMReader(model=MODEL, template=template, soft_prompt=soft_prompt, prefix_cache=cache, **window)
            for (question, _), docs in zip(ranked[:WARMUP], packed[-1]):
                reader.run(query=question, documents=docs)
            readers.append(reader)

        ms = [[] for _ in settings]
        answers = [[] for _ in settings]
        prompt_tokens = [[] for _ in settings]
        for n in tqdm(range(WARMUP, len(ranked)), desc="timing"):
            question = ranked[n][0]
            for i, reader in enumerate(readers):
                t = time.perf_counter()
                a = reader.run(query=question, documents=packed[i][n])["answers"][0]
                ms[i].append(1000 * (time.perf_counter() - t))
                answers[i].append((a.meta["raw"], a.meta["new_tokens"]))
                prompt_tokens[i].append(a.meta["prompt_tokens"])

    tok = load_backbone(MODEL).tokenizer
    soft_len = args.soft_prompt_length
    # positions the cache covers: soft prompt vectors + the template's prefix ids (BOS, instruction, examples)
    prefix_len = {t: (soft_len if sp else 0) + len(encode_prefix(tok, get_template(t))) for t, sp, _ in settings}

    rows = []
    for i, (template, soft_prompt, cache) in enumerate(settings):
        same = sum(a == b for a, b in zip(answers[i], answers[i - 1])) if cache else None
        rows.append((
            template, soft_label if soft_prompt else "none", "on" if cache else "off",
            prefix_len[template] if cache else "", statistics.mean(prompt_tokens[i]),
            statistics.mean(n for _, n in answers[i]), statistics.median(ms[i]), float(np.percentile(ms[i], 90)),
            f"{build_ms[i]:.0f}" if cache else "", f"{same}/{len(answers[i])}" if cache else "",
        ))

    header = ("| template | soft prompt | prefix cache | cached positions | prompt tokens (mean, incl. soft) | "
              "new tokens (mean) | median ms | p90 ms | prefix build ms (once) | same answers as off |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {t} | {s} | {c} | {p} | {pt:.0f} | {nt:.1f} | {med:.0f} | {p90:.0f} | {w} | {same} |\n"
        for t, s, c, p, pt, nt, med, p90, w, same in rows
    )
    speedups = "; ".join(
        f"{rows[i][0]}: median {rows[i - 1][6] / rows[i][6]:.2f}x faster with the cache"
        for i in range(1, len(rows), 2)
    )
    cmd = "python " + shlex.join(sys.argv)
    machine = (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, torch threads: {torch.get_num_threads()}, "
               f"float32, greedy, up to {window['max_new_tokens']} new tokens, {window['context_length']}-token window")
    text = (
        "# Reader latency: prefix KV cache off / on\n\n"
        f"`FrozenLMReader.run` on `{args.questions}`, {len(ranked) - WARMUP} questions timed after {WARMUP} "
        f"warm-up calls per reader. Passages: the documents `{Path(args.pipeline).name}` hands its packer, packed by "
        f"a `ContextPacker` with each reader's settings. {machine}.\n\n"
        f"Command: `{cmd}`\n\n"
        + (f"Note: {args.note}\n\n" if args.note else "")
        + table
        + f"\n{speedups}.\n\n"
        "\"cached positions\": soft prompt vectors + template prefix ids whose keys and values are computed "
        "once per process; \"prefix build ms\": that one forward pass (`PrefixCache.build`), paid in "
        "`warm_up()`, not per question."
        + (" The `qa` rows use an untrained soft prompt, so their answers are meaningless; they time the "
           "shape of a prompt-tuned reader.\n" if args.soft_prompt == "random" else
           " The `qa` rows use the shipped trained soft prompt, whose short answers also end decoding sooner.\n")
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
