"""``report.md`` and PNG plots for an evaluation run (see :mod:`odqa.evaluation`)."""

from __future__ import annotations

import json
from pathlib import Path

from odqa.evaluation import KS
from odqa.runs import read_records


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def write_report(out: Path, title: str, command: str) -> Path:
    """Write ``report.md``, ``topk.png`` and ``latency.png`` from a finished run directory."""
    metrics = json.loads((out / "metrics.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    records = read_records(out / "predictions.jsonl")
    lines = [f"# {title}", "", f"Command: `{command}`", "", f"Questions: {metrics['questions']} "
             "(deduplicated by (id, question)).", "", "## Per stage", "",
             "| stage | " + " | ".join(f"top-{k}" for k in KS) + " |", "|---|" + "---|" * len(KS)]
    for name, accs in metrics["stages"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(accs.get(f"top{k}")) for k in KS) + " |")
    lines += ["", "| LM-input recall | answer lost to packing | EM | F1 |", "|---|---|---|---|",
              f"| {_fmt(metrics['lm_input_recall'])} | {_fmt(metrics['answer_lost_to_packing'])} | "
              f"{_fmt(metrics['em'])} | {_fmt(metrics['f1'])} |"]
    if "answerable" in metrics:
        a = metrics["answerable"]
        lines += ["", f"Answerable from the evidence lead ({a['questions']} questions): EM {_fmt(a['em'])}, "
                  f"LM-input recall {_fmt(a['lm_input_recall'])}."]
    lines += ["", "## Latency per question", "", "| stage | median ms | mean ms |", "|---|---|---|"]
    lines += [f"| {k} | {v['median_ms']:.1f} | {v['mean_ms']:.1f} |" for k, v in timings.items()]
    lines += ["", "![top-k accuracy](topk.png)", "", "![latency by stage](latency.png)", ""]
    _plots(out, records, timings)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _plots(out: Path, records: list[dict], timings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in records[0]["stages"] if records else []:
        depth = max(len(r["stages"][name]) for r in records)
        ks = list(range(1, depth + 1))
        acc = [100 * sum(any(r["stages"][name][:k]) for r in records) / len(records) for k in ks]
        ax.plot(ks, acc, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k (passages)")
    ax.set_ylabel("answer in top-k (%)")
    ax.set_title("Top-k retrieval accuracy per stage")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "topk.png", dpi=100)
    plt.close(fig)

    stages = [k for k in timings if k != "total"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(stages, [timings[k]["median_ms"] for k in stages])
    ax.set_xscale("log")
    ax.set_xlabel("median ms per question (log scale)")
    ax.set_title("Latency by stage")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
