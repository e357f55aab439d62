"""``odqa eval idpt``: ID-PT against plain prompt tuning, full fine-tuning and the frozen LM, per task
and per cluster of the multitask mixture, with trainable parameters and inference overhead.

Every system runs through the same :class:`~odqa.components.idpt.IDPTLM` (greedy decoding, the
same inputs, the same LM), so only the learned module differs. Scores: accuracy for
classification (exact label match), token F1 for description generation, EM for the QA and
naming tasks (SQuAD normalization, :mod:`odqa.metrics`). The *seen average* is the mean of the
per-task scores over the tasks trained on; held-out tasks are reported apart.

Overhead: each system decodes exactly ``fixed_tokens`` tokens for the same inputs, interleaved
input by input so machine load hits every system alike; ID-PT's extra time over the frozen LM
with a shared prompt of the same length is the generator's cost.

Writes ``metrics.json``, ``report.md``, ``scores.png`` and ``predictions-SYSTEM.jsonl``
(resumable) under ``--out``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from odqa.errors import OdqaError
from odqa.metrics import exact_match, f1, paired_bootstrap
from odqa.runs import RunWriter, read_records

SYSTEM_LABELS = {"idpt": "ID-PT", "prompt": "plain PT", "finetune": "fine-tuned", "frozen": "frozen LM (zero-shot)"}


def task_score(prediction: str, answers: list[str], metric: str) -> dict:
    """``{"em", "f1", "score"}`` (0-100); ``score`` is the task's primary metric (accuracy = exact label)."""
    em, f = 100.0 * exact_match(prediction, answers), 100.0 * f1(prediction, answers)
    return {"em": em, "f1": f, "score": f if metric == "f1" else em}


def score_examples(lm, examples, progress: bool = True, path: Path | None = None, desc: str = "scoring") -> list[dict]:
    """Predict and score every example with ``lm`` (an :class:`IDPTLM`); resumable through ``path``."""
    from tqdm.auto import tqdm

    done = {r["id"]: r for r in read_records(path)} if path else {}
    writer = RunWriter(path) if path else None
    try:
        for e in tqdm([e for e in examples if e.id not in done], desc=desc, unit="ex", disable=not progress):
            out = lm.generate(e.inputs)
            rec = {"id": e.id, "task": e.task, "cluster": e.cluster, "held_out": e.held_out, "template": e.template,
                   "prediction": out["text"], "answers": e.answers, "ms": round(out["ms"], 1),
                   **task_score(out["text"], e.answers, e.metric)}
            done[e.id] = rec
            if writer:
                writer.write(rec)
    finally:
        if writer:
            writer.close()
    return [done[e.id] for e in examples]


def summarize(records: list[dict]) -> dict:
    """Per task (mean score, EM, F1), per cluster (mean of its tasks), the seen and held-out averages."""
    tasks: dict[str, dict] = {}
    for r in records:
        t = tasks.setdefault(r["task"], {"cluster": r["cluster"], "held_out": r["held_out"], "n": 0, "score": 0.0,
                                         "em": 0.0, "f1": 0.0})
        t["n"] += 1
        for k in ("score", "em", "f1"):
            t[k] += r[k]
    for t in tasks.values():
        for k in ("score", "em", "f1"):
            t[k] = round(t[k] / t["n"], 2)
    clusters: dict[str, list[float]] = {}
    for t in tasks.values():
        clusters.setdefault(t["cluster"], []).append(t["score"])
    seen = [t for t in tasks.values() if not t["held_out"]]
    held = [t for t in tasks.values() if t["held_out"]]

    def mean(xs):
        return round(sum(xs) / len(xs), 2) if xs else None

    return {"tasks": tasks, "clusters": {c: mean(v) for c, v in clusters.items()},
            "seen_average": mean([t["score"] for t in seen]), "held_out_average": mean([t["score"] for t in held]),
            "held_out_f1": mean([t["f1"] for t in held]),
            "em": mean([t["em"] for t in seen]), "examples": len(records)}


def measure_overhead(systems: dict, texts: list[str], fixed_tokens: int = 8) -> dict:
    """Milliseconds per input for each system decoding exactly ``fixed_tokens`` tokens, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in systems}
    prompt_ms: dict[str, list[float]] = {name: [] for name in systems}
    for lm in systems.values():  # warm up every model before timing
        lm.generate(texts[0], fixed_tokens=2)
    for text in texts:
        for name, lm in systems.items():
            out = lm.generate(text, fixed_tokens=fixed_tokens)
            times[name].append(out["ms"])
            prompt_ms[name].append(out["prompt_ms"])
    return {name: {"median_ms": round(statistics.median(v), 1), "mean_ms": round(statistics.mean(v), 1),
                   "prompt_median_ms": round(statistics.median(prompt_ms[name]), 2), "inputs": len(v),
                   "new_tokens": fixed_tokens} for name, v in times.items()}


def _trainable(lm) -> dict:
    from odqa.artifacts import read_manifest

    if lm.kind == "frozen":
        return {"total": 0}
    manifest = read_manifest(lm.artifact)
    if lm.kind == "soft_prompt":
        return {"total": lm._soft.prompt.numel()}
    return manifest.get("trainable_params") or {"total": sum(p.numel() for p in lm._backbone.model.parameters())}


def evaluate_idpt(data: str, systems: dict[str, str | None], out: str | Path, model: str = "smollm2-135m-instruct",
                  limit_per_task: int | None = None, timing_inputs: int = 30, fixed_tokens: int = 8,
                  max_new_tokens: int = 16, command: str = "") -> dict:
    """Score each system (``name -> artifact dir``; ``None`` for the frozen LM) on the test split."""
    from odqa.components.idpt import IDPTLM
    from odqa.data.multitask import read_multitask

    if not systems:
        raise OdqaError("odqa eval idpt needs at least one system: --idpt, --soft-prompt, --finetuned or --zero-shot")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = read_multitask(data, "test")
    if limit_per_task:
        kept: dict[str, int] = {}
        subset = []
        for e in test:
            kept[e.task] = kept.get(e.task, 0) + 1
            if kept[e.task] <= limit_per_task:
                subset.append(e)
        test = subset
    lms = {name: IDPTLM(model, artifact=artifact, max_new_tokens=max_new_tokens) for name, artifact in systems.items()}
    results, per_example = {}, {}
    for name, lm in lms.items():
        lm.warm_up()
        records = score_examples(lm, test, path=out / f"predictions-{name}.jsonl", desc=f"scoring {name}")
        per_example[name] = [r["score"] for r in records if not r["held_out"]]
        results[name] = {"label": SYSTEM_LABELS.get(name, name), "artifact": systems[name],
                         "trainable_params": _trainable(lm), **summarize(records)}
    timed = dict(lms)
    timed.setdefault("frozen", IDPTLM(model, max_new_tokens=max_new_tokens))
    timed.pop("finetune", None)  # another model: its speed is the frozen LM's; not part of the overhead question
    timing = measure_overhead(timed, [e.inputs for e in test[:: max(1, len(test) // timing_inputs)]][:timing_inputs],
                              fixed_tokens)
    overhead = {}
    if "idpt" in timing:
        for base in ("prompt", "frozen"):
            if base in timing:
                overhead[f"idpt_over_{base}_percent"] = round(
                    100.0 * (timing["idpt"]["median_ms"] - timing[base]["median_ms"]) / timing[base]["median_ms"], 1)
    metrics = {"data": str(data), "model": model, "test_examples": len(test), "systems": results,
               "timing": timing, "overhead": overhead, "command": command,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if "idpt" in results:
        ours = results["idpt"]
        # trained tasks have equal sizes in the bundled mixture, so the per-example mean is the task average
        metrics["gaps"] = {other: {"seen_average": _diff(ours["seen_average"], r["seen_average"]),
                                   "held_out_average": _diff(ours["held_out_average"], r["held_out_average"]),
                                   "seen_bootstrap": paired_bootstrap(per_example[other], per_example["idpt"])
                                   if per_example["idpt"] else None}
                           for other, r in results.items() if other != "idpt"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_report(out, metrics)
    return metrics


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 2)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def report_table(metrics: dict) -> str:
    systems = metrics["systems"]
    names = list(systems)
    first = systems[names[0]]
    head = "| | " + " | ".join(systems[n]["label"] for n in names) + " |\n|---|" + "---|" * len(names)
    rows = []
    for task, t in first["tasks"].items():
        tag = " (held out)" if t["held_out"] else ""
        metric = "F1" if task == "description" else "accuracy" if t["cluster"] == "classification" else "EM"
        rows.append(f"| {task} [{t['cluster']}{tag}], {metric}, n={t['n']} | "
                    + " | ".join(_fmt(systems[n]["tasks"].get(task, {}).get("score")) for n in names) + " |")
    for cluster in first["clusters"]:
        rows.append(f"| cluster: {cluster} | " + " | ".join(_fmt(systems[n]["clusters"].get(cluster)) for n in names)
                    + " |")
    rows.append("| **average over trained tasks** | " + " | ".join(f"**{_fmt(systems[n]['seen_average'])}**"
                                                                   for n in names) + " |")
    rows.append("| held-out task average | " + " | ".join(_fmt(systems[n]["held_out_average"]) for n in names) + " |")
    rows.append("| held-out task, token F1 | " + " | ".join(_fmt(systems[n].get("held_out_f1")) for n in names) + " |")
    rows.append("| trainable parameters | " + " | ".join(f"{systems[n]['trainable_params']['total']:,}"
                                                         for n in names) + " |")
    timing = metrics["timing"]
    rows.append(f"| ms per input ({next(iter(timing.values()))['new_tokens']} new tokens, median) | "
                + " | ".join(_fmt(timing.get(n, {}).get("median_ms")) if n in timing else "–" for n in names) + " |")
    return "\n".join([head, *rows])


def write_report(out: Path, metrics: dict) -> Path:
    lines = [f"# ID-PT on the multitask mixture ({metrics['test_examples']} test examples)", "",
             f"Command: `{metrics['command']}`", "", "Scores are 0-100 on the test split (accuracy for topic, "
             "token F1 for description, EM otherwise).", "", report_table(metrics), ""]
    if metrics.get("overhead"):
        lines += ["Inference overhead of ID-PT: " + ", ".join(
            f"{v:+.1f}% over {k.split('_over_')[1].split('_')[0]}" for k, v in metrics["overhead"].items())
            + " (median ms per input; `frozen` is the LM with no prompt).", ""]
    if metrics.get("gaps"):
        lines += ["Gaps (ID-PT minus other), trained-task average / held-out: " + "; ".join(
            f"{k}: {_fmt(v['seen_average'])} / {_fmt(v['held_out_average'])}" for k, v in metrics["gaps"].items()), ""]
        lines += ["95% paired-bootstrap interval of ID-PT minus other, per trained-task example: " + "; ".join(
            f"{k}: {b['diff']:+.1f} [{b['low']:+.1f}, {b['high']:+.1f}]" for k, v in metrics["gaps"].items()
            if (b := v.get("seen_bootstrap"))), ""]
    lines += ["![scores per task and cluster](scores.png)", ""]
    _plot(out / "scores.png", metrics)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _plot(path: Path, metrics: dict) -> None:
    from odqa.eval.report import _pyplot

    plt = _pyplot()
    systems = metrics["systems"]
    names = list(systems)
    first = systems[names[0]]
    groups = [t + (" *" if v["held_out"] else "") for t, v in first["tasks"].items()]
    groups += [f"[{c}]" for c in first["clusters"]] + ["trained avg"]

    def values(s):
        return ([s["tasks"].get(t, {}).get("score") or 0 for t in first["tasks"]]
                + [s["clusters"].get(c) or 0 for c in first["clusters"]] + [s["seen_average"] or 0])

    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups)), 4.2))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values(systems[n]), width, label=systems[n]["label"])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("score (0-100)")
    ax.set_title("ID-PT vs baselines per task and [cluster] (* = held-out task)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
