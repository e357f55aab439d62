"""``report.md`` and PNG plots for an evaluation run (see :mod:`odqa.eval.harness`)."""

from __future__ import annotations

import json
from pathlib import Path

from odqa.eval.harness import KS
from odqa.metrics import recall_at_k
from odqa.runs import read_records


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def write_report(out: Path, title: str, command: str) -> Path:
    """Write ``report.md``, ``topk.png`` (when the pipeline retrieves) and ``latency.png`` from a finished
    run directory."""
    metrics = json.loads((out / "metrics.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    records = read_records(out / "predictions.jsonl")
    lines = [f"# {title}", "", f"Command: `{command}`", "", f"Questions: {metrics['questions']} "
             "(deduplicated by (id, question)).", "", "## Per stage", ""]
    if metrics["stages"]:
        lines += ["| stage | " + " | ".join(f"top-{k}" for k in KS) + " |", "|---|" + "---|" * len(KS)]
        for name, accs in metrics["stages"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(accs.get(f"top{k}")) for k in KS) + " |")
    else:
        lines.append("No retrieval stage: the pipeline answers closed-book.")
    lines += ["", "| LM-input recall | answer lost to packing | EM | F1 |", "|---|---|---|---|",
              f"| {_fmt(metrics['lm_input_recall'])} | {_fmt(metrics['answer_lost_to_packing'])} | "
              f"{_fmt(metrics['em'])} | {_fmt(metrics['f1'])} |"]
    if "answerable" in metrics:
        a = metrics["answerable"]
        lines += ["", f"Answerable from the evidence lead ({a['questions']} questions): EM {_fmt(a['em'])}, "
                  f"LM-input recall {_fmt(a['lm_input_recall'])}."]
    lines += ["", "## Latency per question", "", "| stage | median ms | mean ms |", "|---|---|---|"]
    lines += [f"| {k} | {v['median_ms']:.1f} | {v['mean_ms']:.1f} |" for k, v in timings.items()]
    lines += ["", "![top-k accuracy](topk.png)", ""] if metrics["stages"] else [""]
    lines += ["![latency by stage](latency.png)", ""]
    _plots(out, records, timings)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _topk_plot(path: Path, curves: dict[str, list[float]], title: str) -> None:
    """One answer-in-top-k curve (percent at k = 1, 2, ...) per name, k on a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, acc in curves.items():
        ax.plot(range(1, len(acc) + 1), acc, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k (passages)")
    ax.set_ylabel("answer in top-k (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_retrieval_report(out: Path, metrics: dict, curve: list[float], title: str, command: str,
                           label: str = "retriever") -> Path:
    """``report.md`` and ``topk.png`` (``curve`` labelled ``label``) for ``odqa eval retrieval``
    (see :mod:`odqa.eval.retrieval`)."""
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"Questions: {metrics['questions']}; ctxs per question: {metrics['mean_ctxs']:g} on average. "
             "A ctx holds the answer when DPR's `has_answer` finds it in its text (not its title).", "",
             "| k | answer in top-k (%) |", "|---|---|"]
    lines += [f"| {key[3:]} | {_fmt(acc)} |" for key, acc in metrics["topk"].items()]
    if metrics["skipped_k"]:
        lines += ["", f"Skipped k = {', '.join(map(str, metrics['skipped_k']))}: no entry has that many ctxs."]
    flags = metrics["has_answer_flags"]
    if flags["checked"]:
        lines += ["", f"odqa's `has_answer` disagrees with the file's own flag on {flags['disagree']} of "
                  f"{flags['checked']} ctxs."]
    lines += ["", "![top-k accuracy](topk.png)", ""]
    _topk_plot(out / "topk.png", {label: curve} if curve else {}, "Top-k retrieval accuracy")
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _plots(out: Path, records: list[dict], timings: dict) -> None:
    curves = {}
    for name in records[0]["stages"] if records else []:
        depth = max(len(r["stages"][name]) for r in records)
        curves[name] = list(recall_at_k([r["stages"][name] for r in records], range(1, depth + 1)).values())
    if curves:
        _topk_plot(out / "topk.png", curves, "Top-k retrieval accuracy per stage")

    plt = _pyplot()
    stages = [k for k in timings if k != "total"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(stages, [timings[k]["median_ms"] for k in stages])
    ax.set_xscale("log")
    ax.set_xlabel("median ms per question (log scale)")
    ax.set_title("Latency by stage")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
