"""Recursive closed-book QA: compare the evaluation runs of each mode (paper, Section 4).

    # a fixed, seeded sample of the closed-book test split (written once, reused by every mode)
    python eval/recursive.py sample --n 200 --seed 0 --out eval/runs/recursive/test-sample.jsonl
    python eval/recursive.py sample --n 100 --seed 1 --source eval/runs/recursive/test-sample.jsonl \
        --out eval/runs/recursive/test-sample-100.jsonl
    # one `odqa eval` run per mode into eval/runs/recursive/MODE (see eval/RESULTS.md), then:
    python eval/recursive.py report --runs eval/runs/recursive

The report pairs the runs question by question: EM and F1 per mode, paired bootstrap 95%
confidence intervals of the differences (:func:`odqa.metrics.paired_bootstrap`), wall time per
question, and estimated FLOPs per question:

    FLOPs ~ 2 * N_nonemb * T_processed + 2 * d * V * T_logits + 2 * N_connector * T_connector

- ``N_nonemb``: the backbone's parameters without the input embedding table (and without the LM
  head, counted apart: it only runs where a next token is chosen);
- ``T_processed``: positions run through the transformer, over both passes, as each reader
  counts them in ``reader_meta`` (the input, every fed-back generated token; for the one-pass
  reader ``prompt_tokens + new_tokens - 1``; soft prompt positions included; prefix-cache
  reuse is *not* subtracted, so this is the cost without caching);
- ``T_logits``: positions whose next-token distribution was computed (the generated tokens);
- the connector's matmuls for neural recursion (about 0.3 MFLOP per position: negligible).

Writes ``summary.md``, ``summary.json`` and ``recursive.png`` into ``--runs`` (and, with
``--figure``, a copy of the chart for eval/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
from pathlib import Path

# label, run dir, backbone, pipeline file
MODES = [
    ("one pass (SmolLM2-135M)", "one-pass", "smollm2-135m-instruct", "pipelines/closed_book.yml"),
    ("textual recursion (2 passes)", "textual", "smollm2-135m-instruct", "pipelines/recursive_textual.yml"),
    ("neural recursion (2 passes)", "neural", "smollm2-135m-instruct", "pipelines/recursive_neural.yml"),
    ("neural recursion, connector pre-trained 10 steps (not 200)", "neural-pre10", "smollm2-135m-instruct",
     "pipelines/recursive_neural_pre10.yml"),
    ("neural recursion, no connector pre-training", "neural-nopretrain", "smollm2-135m-instruct",
     "pipelines/recursive_neural_nopretrain.yml"),
    ("one pass, Gemma-3-270m (bigger model)", "gemma-one-pass", "gemma3-270m", "pipelines/closed_book_gemma.yml"),
    ("one pass, Gemma-3-270m, few-shot text prompt (no training)", "gemma-fewshot", "gemma3-270m",
     "pipelines/closed_book_gemma_fewshot.yml"),
]
COLORS = {"one-pass": "tab:gray", "textual": "tab:blue", "neural": "tab:red", "neural-pre10": "tab:orange",
          "neural-nopretrain": "tab:pink", "gemma-one-pass": "tab:green", "gemma-fewshot": "tab:olive"}
# differences reported: (a, b) -> b - a
PAIRS = [("one-pass", "textual"), ("one-pass", "neural"), ("textual", "neural"), ("neural-nopretrain", "neural"),
         ("neural-pre10", "neural"), ("neural-nopretrain", "neural-pre10"), ("one-pass", "neural-nopretrain"),
         ("gemma-one-pass", "neural-nopretrain"),
         ("one-pass", "gemma-one-pass"), ("gemma-one-pass", "neural"), ("gemma-one-pass", "textual"),
         ("gemma-fewshot", "neural"), ("gemma-fewshot", "textual"), ("gemma-fewshot", "one-pass")]


def cmd_sample(args) -> int:
    from odqa.data.questions import dedup, load_questions

    qs = dedup(load_questions(args.source))
    picked = sorted(random.Random(args.seed).sample(range(len(qs)), min(args.n, len(qs))))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"id": qs[i].id, "question": qs[i].question, "answers": qs[i].answers},
                                      ensure_ascii=False) + "\n" for i in picked), encoding="utf-8")
    print(f"wrote {len(picked)} of {len(qs)} questions of {args.source} (seed {args.seed}) to {out}")
    return 0


def backbone_sizes(name: str) -> dict:
    """Non-embedding parameters, hidden size and vocabulary of a backbone (loaded once)."""
    from odqa.lm.backbone import load_backbone

    model = load_backbone(name).model
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    tied = head.data_ptr() == emb.data_ptr()
    non_emb = total - emb.numel() - (0 if tied else head.numel())
    return {"non_embedding": non_emb, "d": int(emb.shape[1]), "vocab": int(head.shape[0])}


def question_flops(meta: dict, sizes: dict, connector_params: int) -> float:
    if "tokens_processed" in meta:
        t, logits = meta["tokens_processed"], meta["logit_positions"]
    else:  # FrozenLMReader: the input, then every generated token but the last fed back
        t, logits = meta["prompt_tokens"] + meta["new_tokens"] - 1, meta["new_tokens"]
    conn = 2 * connector_params * meta.get("connector_positions", 0)
    return 2 * sizes["non_embedding"] * t + 2 * sizes["d"] * sizes["vocab"] * logits + conn


def cmd_report(args) -> int:
    from odqa.metrics import paired_bootstrap
    from odqa.runs import read_records

    runs = Path(args.runs)
    loaded = {}
    for label, key, model, pipeline in MODES:
        path = runs / key / "predictions.jsonl"
        if not path.exists():
            print(f"skipping {key}: no {path}", file=sys.stderr)
            continue
        loaded[key] = read_records(path)
    # every row on the same questions: those every available mode answered
    common = set.intersection(*({str(r["id"]) for r in recs} for recs in loaded.values())) if loaded else set()
    rows, per_q, sizes = [], {}, {}
    for label, key, model, pipeline in MODES:
        if key not in loaded:
            continue
        recs = [r for r in loaded[key] if str(r["id"]) in common]
        if model not in sizes:
            sizes[model] = backbone_sizes(model)
        conn = 0
        if key.startswith("neural"):
            import yaml

            from odqa.components.recursion import Connector

            spec = yaml.safe_load(Path(pipeline).read_text())["components"]["reader"]["init_parameters"]
            conn = Connector.load(Path(pipeline).parent / spec["recursion"]).num_parameters
        flops = [question_flops(r["reader_meta"], sizes[model], conn) for r in recs]
        ms = [1000 * r["timings"]["total"] for r in recs]
        timing = _timing(Path(args.timing_runs) / key) if args.timing_runs else None
        per_q[key] = {str(r["id"]): (100.0 * r["em"], 100.0 * r["f1"]) for r in recs}
        rows.append({"label": label, "key": key, "pipeline": pipeline, "questions": len(recs),
                     "em": statistics.mean(100.0 * r["em"] for r in recs),
                     "f1": statistics.mean(100.0 * r["f1"] for r in recs),
                     "ms_median": statistics.median(ms), "ms_mean": statistics.mean(ms), "timing": timing,
                     "gflops_mean": statistics.mean(flops) / 1e9})
    diffs = []
    for a, b in PAIRS:
        if a in per_q and b in per_q:
            ids = [i for i in per_q[a] if i in per_q[b]]
            for k, name in ((0, "EM"), (1, "F1")):
                ci = paired_bootstrap([per_q[a][i][k] for i in ids], [per_q[b][i][k] for i in ids])
                diffs.append({"a": a, "b": b, "metric": name, **ci})
    if "one-pass" in per_q:  # each mode's EM gain over one pass, for the chart's error bars
        base = per_q["one-pass"]
        for r in rows:
            ids = [i for i in base if i in per_q[r["key"]]]
            r["em_vs_one_pass"] = paired_bootstrap([base[i][0] for i in ids], [per_q[r["key"]][i][0] for i in ids])
    summary = {"modes": rows, "differences": diffs, "backbones": sizes, "timing_label": args.timing_label}
    (runs / "summary.json").write_text(json.dumps(summary, indent=2))
    (runs / "summary.md").write_text(markdown(summary), encoding="utf-8")
    chart(rows, diffs, runs / "recursive.png")
    if args.figure:
        shutil.copyfile(runs / "recursive.png", args.figure)
    print(markdown(summary))
    return 0


def _timing(run: Path) -> dict | None:
    """Median wall time per question of another run of the same mode (``--timing-runs``)."""
    from odqa.runs import read_records

    recs = read_records(run / "predictions.jsonl") if (run / "predictions.jsonl").exists() else []
    if not recs:
        return None
    return {"questions": len(recs), "ms_median": statistics.median(1000 * r["timings"]["total"] for r in recs)}


def markdown(summary: dict) -> str:
    timed = any(r.get("timing") for r in summary["modes"])
    extra = f" {summary.get('timing_label') or 'timing runs'}: ms/question (median, n) |" if timed else ""
    lines = ["| mode | questions | EM | F1 | ms/question in these runs (median) | GFLOPs/question (est.) |" + extra,
             "| --- | --- | --- | --- | --- | --- |" + (" --- |" if timed else "")]
    for r in summary["modes"]:
        t = r.get("timing")
        cell = (f" {t['ms_median']:.0f} ({t['questions']}) |" if t else " – |") if timed else ""
        lines.append(f"| {r['label']} | {r['questions']} | {r['em']:.1f} | {r['f1']:.1f} | {r['ms_median']:.0f} | "
                     f"{r['gflops_mean']:.1f} |" + cell)
    lines += ["", "| difference (b − a) | metric | mean | 95% CI (paired bootstrap) |", "| --- | --- | --- | --- |"]
    for d in summary["differences"]:
        lines.append(f"| {d['b']} − {d['a']} | {d['metric']} | {d['diff']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], diffs: list[dict], path: Path) -> None:
    from odqa.eval.report import _pyplot

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = next((r for r in rows if r["key"] == "one-pass"), None)
    errs = []
    for r in rows:  # error bar: the paired CI of the difference to one pass, drawn around the mode's EM
        d = r.get("em_vs_one_pass") if r["key"] != "one-pass" else None
        errs.append((r["em"] - (base["em"] + d["low"]), (base["em"] + d["high"]) - r["em"]) if d and base else (0, 0))
    names = [r["key"] for r in rows]
    ax1.bar(range(len(rows)), [r["em"] for r in rows], yerr=list(zip(*errs)) if errs else None, capsize=4,
            color=[COLORS.get(r["key"], "tab:gray") for r in rows])
    ax1.set_xticks(range(len(rows)), names, fontsize=8, rotation=20)
    ax1.set_ylabel("EM (closed-book test questions)")
    ax1.set_title("EM per mode (bars: 95% paired CI of the gain over one pass)", fontsize=9)
    for r in rows:
        ax2.scatter(r["gflops_mean"], r["em"], s=40, color=COLORS.get(r["key"], "tab:gray"))
        ax2.annotate(r["key"], (r["gflops_mean"], r["em"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax2.set_xlabel("estimated GFLOPs per question")
    ax2.set_ylabel("EM")
    ax2.set_title("EM against compute", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--source", default="fanoutqa-closedbook:test", help="question set or file to sample from")
    s.set_defaults(func=cmd_sample)
    r = sub.add_parser("report")
    r.add_argument("--runs", default="eval/runs/recursive")
    r.add_argument("--figure", default=None, help="also copy the chart here (e.g. eval/recursive.png)")
    r.add_argument("--timing-runs", default=None,
                   help="runs of the same modes on one machine (e.g. a small sample on idle CPU cores): "
                        "their median ms/question is added as a column")
    r.add_argument("--timing-label", default=None, help="the timing column's name (e.g. '2 CPU cores')")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
