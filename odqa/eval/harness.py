"""The evaluation harness: run a pipeline over a question set and score every stage, NQ-style.

Per question it records the prediction, EM and F1, DPR ``has_answer`` (on the passage text,
not its title, as DPR does) for every document each stage returned (retrievers, join,
ranker), the passages the reader read, what the packer cut, and the timings. From those
records it computes:

- top-k retrieval accuracy (k = 1, 5, 20, 100) after each document stage;
- LM-input recall: the answer is in a passage the reader actually read (paper, Table 2);
- answer lost to packing: the packer's input held the answer, its output did not;
- EM and F1 (SQuAD normalization, best over aliases).

Records go to ``predictions.jsonl`` one by one, durably, so a killed run resumes where it
stopped; metrics are computed from the records alone, so a resumed run's ``metrics.json``
equals an uninterrupted one's. Timings, which differ run to run, go to ``timings.json``.
``run.json`` records what made the predictions (:func:`run_key`), and a run made by another
pipeline, or by a module re-trained at the same path, is not resumed (:func:`check_run_key`).
With a Ray engine (``odqa eval --engine ray``) a pool of actors, each holding the pipeline,
scores the questions, and this process writes their records in question order: the same
files as a single-process run (timings aside), resumed the same way.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from odqa.errors import OdqaError
from odqa.metrics import exact_match, f1, has_answer, percent, recall_at_k
from odqa.data.questions import Question, dedup
from odqa.runs import (EVAL_RUN_KIND, OutputLock, RunWriter, atomic_write_bytes, check_replaceable, file_sha256,
                       read_records)

if TYPE_CHECKING:
    from odqa.ray_engine import RayEngine

KS = (1, 5, 20, 100)


def _flags(documents, answers) -> list[bool]:
    # DPR's convention: the answer must be in the passage text; the title does not count
    return [has_answer(d.content or "", answers) for d in documents]


def _document_stages(qa, outputs: dict) -> list[str]:
    """Stages that output documents (retrievers, join, ranker; not the packer), in pipeline order."""
    import networkx

    order = networkx.topological_sort(qa.pipeline.graph)
    return [n for n in order if n != qa.packer and "documents" in outputs.get(n, {})]


def _packer_input(qa) -> str | None:
    if not qa.packer:
        return None
    senders = [u for u, _, data in qa.pipeline.graph.in_edges(qa.packer, data=True)
               if data.get("to_socket") is not None and data["to_socket"].name == "documents"]
    return senders[0] if senders else None


def score_question(qa, q: Question) -> dict:
    """Run one question through the pipeline and score every stage."""
    return score_answer(qa, q, *qa.ask_with_outputs(q.question))


def score_batch(qa, questions: list[Question]) -> list[dict]:
    """:func:`score_question` for several questions answered together (the same records)."""
    records = []
    for q, result in zip(questions, qa.ask_many_with_outputs([q.question for q in questions], len(questions))):
        if not isinstance(result, tuple):  # a set's question the pipeline cannot answer fails the run, as alone
            raise result.error
        records.append(score_answer(qa, q, *result))
    return records


def score_answer(qa, q: Question, answer, outputs: dict) -> dict:
    """Score every stage of one question's answer and the pipeline's outputs for it."""
    stages = {name: _flags(outputs[name]["documents"], q.answers) for name in _document_stages(qa, outputs)}
    read = [{"id": p.id, "title": p.title, "has_answer": has_answer(p.text, q.answers)}
            for p in answer.passages]
    source = _packer_input(qa)
    packer_input_has = bool(source and any(stages.get(source, [])))
    return {
        "id": q.id,
        "question": q.question,
        "answers": q.answers,
        "prediction": answer.answer,
        "em": exact_match(answer.answer, q.answers),
        "f1": f1(answer.answer, q.answers),
        "score": answer.score,
        "stages": stages,
        "read": read,
        "dropped_ids": answer.dropped_ids,
        "lm_input_recall": any(r["has_answer"] for r in read),
        "answer_lost_to_packing": packer_input_has and not any(r["has_answer"] for r in read),
        "answer_in_evidence": q.answer_in_evidence,
        "timings": answer.timings,
        "reader_meta": answer.meta,  # token counts (and candidates, for recursive readers): FLOPs estimates
    }


def aggregate(records: list[dict]) -> dict:
    """Metrics (in percent) from per-question records; deterministic in the records."""
    if not records:
        raise OdqaError("no predictions to score; the question set is empty")
    n = len(records)
    stages: dict[str, dict] = {}
    for name in records[0]["stages"]:
        depth = max(len(r["stages"].get(name, [])) for r in records)
        ks = [k for k in KS if k <= max(depth, 1)]
        stages[name] = {f"top{k}": v for k, v in recall_at_k([r["stages"][name] for r in records], ks).items()}
    metrics = {
        "questions": n,
        "em": percent([r["em"] for r in records]),
        "f1": percent([r["f1"] for r in records]),
        "lm_input_recall": percent([r["lm_input_recall"] for r in records]),
        "answer_lost_to_packing": percent([r["answer_lost_to_packing"] for r in records]),
        "stages": stages,
    }
    answerable = [r for r in records if r.get("answer_in_evidence")]
    if answerable:
        metrics["answerable"] = {"questions": len(answerable), "em": percent([r["em"] for r in answerable]),
                                 "lm_input_recall": percent([r["lm_input_recall"] for r in answerable])}
    return metrics


def timing_summary(records: list[dict]) -> dict:
    stages: dict[str, list[float]] = {}
    for r in records:
        for k, v in r["timings"].items():
            stages.setdefault(k, []).append(v)
    return {k: {"median_ms": round(1000 * statistics.median(v), 2), "mean_ms": round(1000 * statistics.mean(v), 2)}
            for k, v in stages.items()}


RUN_KEY = "run.json"  # what the run's predictions were made with, beside them


def run_key(qa) -> dict:
    """What a run's predictions depend on: the pipeline's components and settings, with every
    directory they name that holds a ``manifest.json`` (trained artifacts, indexes) stood in for by
    that manifest's sha256, so a module re-trained at the same path counts as a change and the
    repository's location does not."""
    artifacts: dict[str, str] = {}

    def sub(value):
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, str) and 0 < len(value) < 4096 and ("/" in value or value.startswith(".")):
            manifest = Path(value) / "manifest.json"
            if manifest.is_file():
                digest = file_sha256(manifest)
                artifacts[Path(value).name] = digest
                return f"manifest:{digest}"
        return value

    spec = json.dumps(sub(qa.pipeline.to_dict()), sort_keys=True, default=str)
    settings = spec
    for digest in artifacts.values():  # the same settings with any module: tells the two kinds of change apart
        settings = settings.replace(f"manifest:{digest}", "manifest")
    return {"kind": EVAL_RUN_KIND, "pipeline": qa.source, "pipeline_sha256": hashlib.sha256(spec.encode()).hexdigest(),
            "settings_sha256": hashlib.sha256(settings.encode()).hexdigest(), "artifacts": artifacts}


def check_run_key(out: Path, key: dict, resuming: bool) -> None:
    """Refuse to add predictions to a run made by another pipeline or other trained modules."""
    path = out / RUN_KEY
    old = json.loads(path.read_text()) if path.exists() else None
    if resuming and old is not None and old.get("pipeline_sha256") != key["pipeline_sha256"]:
        old_artifacts = old.get("artifacts", {})
        modules = sorted(n for n in set(old_artifacts) | set(key["artifacts"])
                         if old_artifacts.get(n) != key["artifacts"].get(n))
        changed = ["the pipeline's settings"] if old.get("settings_sha256") != key["settings_sha256"] else []
        changed += [f"the trained modules or indexes {', '.join(modules)}"] if modules else []
        what = " and ".join(changed)
        raise OdqaError(f"'{out}' holds predictions made by another pipeline (changed: {what}; that run used "
                        f"{old.get('pipeline', 'an unnamed pipeline')}); pass a new --out, or delete '{path.parent / 'predictions.jsonl'}' "
                        "to start over")
    if old != key:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(key, indent=2).encode("utf-8"))


def evaluate(qa, questions: list[Question], out: Path, progress: bool = True, batch_size: int = 1,
             engine: RayEngine | None = None) -> dict:
    """Score ``questions`` (deduplicated by (id, question)) into ``out``; resumes a killed run.
    ``batch_size`` questions are answered together (the same answers; each batch is written before
    the next starts). ``engine`` (an :class:`odqa.ray_engine.RayEngine`) scores them on a Ray
    actor pool instead of in this process, with the same records and metrics."""
    questions = dedup(questions)
    out = Path(out)
    check_replaceable(out, (EVAL_RUN_KIND,), "an evaluation run")
    with OutputLock(out):
        return _evaluate(qa, questions, out, progress, batch_size, engine)


def _evaluate(qa, questions: list[Question], out: Path, progress: bool, batch_size: int = 1,
              engine: RayEngine | None = None) -> dict:
    path = out / "predictions.jsonl"
    previous = read_records(path)
    check_run_key(out, run_key(qa), resuming=bool(previous))
    done = {str(r["id"]) for r in previous}
    todo = [q for q in questions if q.id not in done]
    ems = [r["em"] for r in previous]
    if engine is None:
        batches = (todo[start:start + batch_size] for start in range(0, len(todo), batch_size))
        scored = (record for batch in batches for record in _score(qa, batch, batch_size))
    else:
        rows = [{"question": json.dumps(q.to_dict(), ensure_ascii=False)} for q in todo]
        args = (qa.pipeline.to_dict(), qa.source, batch_size)
        scored = (json.loads(r["record"]) for r in engine.map(QuestionScorer, args, rows, batch_size, ordered=True))
    with RunWriter(path) as writer:
        bar = tqdm(desc="evaluating", unit="q", disable=not progress, initial=len(done), total=len(questions))
        for record in scored:  # in question order, written one by one: a killed run keeps what it scored
            writer.write(record)
            ems.append(record["em"])
            bar.update(1)
            bar.set_postfix(EM=f"{100 * sum(ems) / len(ems):.1f}")
        bar.close()
    return finish(out, [q.id for q in questions])


def _score(qa, questions: list[Question], batch_size: int) -> list[dict]:
    """The records of one batch of questions, answered together when ``batch_size`` > 1."""
    return score_batch(qa, questions) if batch_size > 1 else [score_question(qa, q) for q in questions]


class QuestionScorer:
    """One Ray actor's work in an evaluation: holds the pipeline (rebuilt once from its
    ``to_dict()``) and scores a batch of questions per call, as :func:`evaluate` does here."""

    def __init__(self, pipeline: dict, source: str, batch_size: int):
        from odqa.api import QA, pipeline_from_dict

        self.qa = QA(pipeline_from_dict(pipeline), source)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        questions = [Question(**json.loads(str(q))) for q in batch["question"]]
        return {"record": [json.dumps(r, ensure_ascii=False) for r in _score(self.qa, questions, self.batch_size)]}


def finish(out: Path, order: list[str] | None = None) -> dict:
    """Write ``metrics.json`` and ``timings.json`` from ``out/predictions.jsonl``."""
    records = read_records(out / "predictions.jsonl")
    if order is not None:
        by_id = {str(r["id"]): r for r in records}
        records = [by_id[i] for i in order if i in by_id]
    metrics = aggregate(records)
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "timings.json", timing_summary(records))
    return metrics


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


def without_stage(qa, name: str):
    """A copy of ``qa``'s pipeline with stage ``name`` removed and its document senders wired
    straight to its receivers (e.g. join -> packer when the ranker goes). ``None`` if absent.
    The copy runs ``qa``'s own (warm) stage instances: no model loads twice, and a store that one
    client at a time may open (Qdrant's local mode) is opened once."""
    from odqa.api import QA, pipeline_from_dict

    if name not in dict(qa.pipeline.walk()):
        return None
    if name in (qa.reader, qa.packer):
        raise OdqaError(f"cannot ablate '{name}': the packer and the reader are needed to answer")
    pipe = pipeline_from_dict(qa.pipeline.to_dict())  # fresh instances, cheap: components load in warm_up
    senders = [(u, d["from_socket"].name) for u, _, d in pipe.graph.in_edges(name, data=True)
               if d["to_socket"].name == "documents"]
    receivers = [(v, d["to_socket"].name) for _, v, d in pipe.graph.out_edges(name, data=True)
                 if d["from_socket"].name == "documents"]
    pipe.remove_component(name)
    for receiver, socket in receivers:
        # a receiver left with no document source can't run (e.g. the only retriever removed)
        if not senders and not any(d["to_socket"].name == socket
                                   for _, _, d in pipe.graph.in_edges(receiver, data=True)):
            raise OdqaError(f"cannot ablate '{name}': '{receiver}' would have no documents left")
        for sender, out_socket in senders:
            pipe.connect(f"{sender}.{out_socket}", f"{receiver}.{socket}")
    for stage in pipe.graph.nodes:  # after the rewiring, which edits the fresh instances' sockets only
        pipe.graph.nodes[stage]["instance"] = qa.pipeline.get_component(stage)
    return QA(pipe, f"{qa.source} without {name}")


def ablation_table(rows: list[tuple[str, dict | None]]) -> str:
    """Side-by-side metrics of the full pipeline and each ablation (the paper's Table 2 layout)."""
    lines = ["| pipeline | top-20 (last stage) | LM-input recall | answer lost to packing | EM | F1 |",
             "|---|---|---|---|---|---|"]
    for label, m in rows:
        if m is None:
            lines.append(f"| {label} | not in this pipeline | | | | |")
            continue
        last = list(m["stages"].values())[-1] if m["stages"] else {}
        cells = [last.get("top20"), m["lm_input_recall"], m["answer_lost_to_packing"], m["em"], m["f1"]]
        lines.append(f"| {label} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


COMPARED = ("em", "f1", "lm_input_recall")


def compare(run_a: Path, run_b: Path, metrics: tuple[str, ...] = COMPARED) -> dict:
    """Paired differences ``b - a`` of two runs on the questions both answered: per metric, the
    mean difference in points with its 95% paired bootstrap interval (:func:`odqa.metrics.paired_bootstrap`)."""
    from odqa.metrics import paired_bootstrap

    runs = []
    for run in (Path(run_a), Path(run_b)):
        path = run / "predictions.jsonl"
        if not path.is_file():
            raise OdqaError(f"'{run}' holds no predictions.jsonl; pass the --out directory of an `odqa eval` run")
        runs.append({str(r["id"]): r for r in read_records(path)})
    shared = [i for i in runs[0] if i in runs[1]]
    if not shared:
        raise OdqaError(f"'{run_a}' and '{run_b}' share no question ids; compare runs on the same question set")
    out = {"questions": len(shared), "a": str(run_a), "b": str(run_b)}
    for m in metrics:
        a = [100.0 * float(runs[0][i][m]) for i in shared]
        b = [100.0 * float(runs[1][i][m]) for i in shared]
        out[m] = {"a": sum(a) / len(a), "b": sum(b) / len(b), **paired_bootstrap(a, b)}
    return out


def comparison_line(c: dict) -> str:
    """``EM 17.2 -> 21.0 (+3.8 [+1.1, +6.4])  F1 ...`` for a :func:`compare` result."""
    parts = [f"{m}: {c[m]['a']:.1f} -> {c[m]['b']:.1f} ({c[m]['diff']:+.1f} [{c[m]['low']:+.1f}, {c[m]['high']:+.1f}])"
             for m in COMPARED if m in c]
    return f"{c['questions']} shared questions, b - a with paired 95% CI: " + "; ".join(parts)
