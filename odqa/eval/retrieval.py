"""Top-k retrieval accuracy of a retrieval-only run written in DPR's retriever-output format.

DPR's ``dense_retriever.py`` writes a JSON list, one entry per question::

    [{"question": "...", "answers": ["..."],
      "ctxs": [{"id": "...", "title": "...", "text": "...", "score": ..., "has_answer": true}, ...]}, ...]

Each ctx is judged with odqa's own :func:`odqa.metrics.has_answer` on its ``text`` (DPR's
convention: the text, not the title); a ctx without ``text`` falls back to the file's own
``has_answer`` flag. Where both are present, the flags that disagree with odqa's check are
counted, as a sanity line: a large count means the file was made with another tokenizer or
answer-matching rule (e.g. regex matching for CuratedTREC).

    odqa eval retrieval --results dpr_results.json --out eval/runs/NAME --k 1,5,20,100
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from odqa.data.corpus import read_json
from odqa.errors import InputFormatError, ResourceNotFoundError
from odqa.eval.harness import KS
from odqa.metrics import has_answer
from odqa.runs import atomic_write_bytes

_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}
FORMAT = ('a JSON list of {"question": str, "answers": [str, ...], "ctxs": [{"text": str, "has_answer": bool, '
          '...}, ...]} entries, as DPR\'s dense_retriever.py writes')


def load_results(path: str | Path) -> list[dict]:
    """Read and check a DPR retriever-output file; errors name the entry and ctx index (0-based)."""
    path = Path(path)
    if not path.is_file():
        raise ResourceNotFoundError(f"results file '{path}' does not exist; pass the JSON file that DPR's "
                                    "dense_retriever.py wrote (its --out_file)")
    data = read_json(path, InputFormatError, FORMAT)
    if not isinstance(data, list):
        raise InputFormatError(f"{path}: the top level is a JSON {_json_type(data)}, "
                               f"not a list; expected {FORMAT}")
    if not data:
        raise InputFormatError(f"{path}: the list is empty; expected one entry per question")
    for i, entry in enumerate(data):
        _check_entry(path, i, entry)
    return data


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_entry(path: Path, i: int, entry) -> None:
    where = f"{path}: entry {i} (0-based)"
    if not isinstance(entry, dict):
        raise InputFormatError(f"{where}: expected an object with 'question', 'answers' and 'ctxs', "
                               f"got a JSON {_json_type(entry)}")
    for field in ("question", "answers", "ctxs"):
        if field not in entry:
            raise InputFormatError(f"{where}: missing '{field}' field; every entry needs 'question', 'answers' "
                                   "and 'ctxs'")
    if not isinstance(entry["question"], str):
        raise InputFormatError(f"{where}: 'question' must be a string, got {entry['question']!r}")
    answers = entry["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputFormatError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
    if not answers:
        raise InputFormatError(f"{where}: empty 'answers' list; every question needs at least one gold answer")
    if not isinstance(entry["ctxs"], list):
        raise InputFormatError(f"{where}: 'ctxs' must be a list of passages, "
                               f"got a JSON {_json_type(entry['ctxs'])}")
    for j, ctx in enumerate(entry["ctxs"]):
        at = f"{where}, ctx {j}"
        if not isinstance(ctx, dict):
            raise InputFormatError(f"{at}: expected an object with 'text' and/or 'has_answer', "
                                   f"got a JSON {_json_type(ctx)}")
        if "text" in ctx and not isinstance(ctx["text"], str):
            raise InputFormatError(f"{at}: 'text' must be a string, got a JSON {_json_type(ctx['text'])}")
        if "has_answer" in ctx and not isinstance(ctx["has_answer"], bool):
            raise InputFormatError(f"{at}: 'has_answer' must be true or false, got {ctx['has_answer']!r}")
        if "text" not in ctx and "has_answer" not in ctx:
            raise InputFormatError(f"{at}: has neither 'text' nor 'has_answer'; give the passage text "
                                   "(odqa checks the answer in it) or DPR's has_answer flag")


def first_hits(entries: list[dict], progress: bool = False) -> tuple[list[int | None], dict]:
    """1-based rank of each entry's first answer-bearing ctx (``None``: no hit), and the count of
    file flags checked against odqa's ``has_answer`` and of those that disagree."""
    ranks: list[int | None] = []
    checked = disagree = 0
    for entry in tqdm(entries, desc="scoring", unit="q", disable=not progress):
        first = None
        for j, ctx in enumerate(entry["ctxs"]):
            if "text" in ctx:
                hit = has_answer(ctx["text"], entry["answers"])
                if "has_answer" in ctx:
                    checked += 1
                    disagree += hit != ctx["has_answer"]
            else:
                hit = ctx["has_answer"]
            if hit and first is None:
                first = j + 1
        ranks.append(first)
    return ranks, {"checked": checked, "disagree": disagree}


def topk_curve(ranks: list[int | None], depth: int) -> list[float]:
    """Answer-in-top-k accuracy (percent) for k = 1..depth."""
    return [100 * sum(r is not None and r <= k for r in ranks) / len(ranks) for k in range(1, depth + 1)]


def score(entries: list[dict], ks: tuple[int, ...] = KS, progress: bool = False) -> tuple[dict, list[float]]:
    """Metrics (percent, 2 decimals) of checked entries, and the full top-k curve for plotting.

    A k beyond the deepest ctx list is left out of ``topk`` and listed under ``skipped_k``."""
    ranks, flags = first_hits(entries, progress)
    depth = max(len(e["ctxs"]) for e in entries)
    curve = topk_curve(ranks, depth)
    metrics = {
        "questions": len(entries),
        "mean_ctxs": round(sum(len(e["ctxs"]) for e in entries) / len(entries), 2),
        "topk": {f"top{k}": round(curve[k - 1], 2) for k in sorted(set(ks)) if k <= depth},
        "skipped_k": [k for k in sorted(set(ks)) if k > depth],
        "has_answer_flags": flags,
    }
    return metrics, curve


def parse_ks(spec: str) -> tuple[int, ...]:
    """``"1,5,20,100"`` -> ``(1, 5, 20, 100)``."""
    try:
        ks = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        ks = ()
    if not ks or any(k < 1 for k in ks):
        raise InputFormatError(f"--k {spec!r}: expected comma-separated positive integers, e.g. --k 1,5,20,100")
    return ks


def table(metrics: dict) -> str:
    """The plain-text summary ``odqa eval retrieval`` prints."""
    lines = [f"{metrics['questions']} questions, {metrics['mean_ctxs']:g} ctxs per question on average",
             "    k  answer in top-k"]
    lines += [f"{key[3:]:>5}  {acc:5.1f}%" for key, acc in metrics["topk"].items()]
    if metrics["skipped_k"]:
        lines.append(f"skipped k = {', '.join(map(str, metrics['skipped_k']))}: no entry has that many ctxs")
    flags = metrics["has_answer_flags"]
    if flags["checked"]:
        lines.append(f"odqa's has_answer disagrees with the file's has_answer flag on {flags['disagree']} "
                     f"of {flags['checked']} ctxs")
    return "\n".join(lines)


def evaluate_file(path: str | Path, out: str | Path | None = None, ks: tuple[int, ...] = KS,
                  command: str = "odqa eval retrieval ...", progress: bool = True) -> dict:
    """Score a DPR results file; with ``out``, write ``metrics.json``, ``report.md`` and ``topk.png`` there."""
    metrics, curve = score(load_results(path), ks, progress)
    if out is not None:
        from odqa.eval.report import write_retrieval_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True).encode("utf-8"))
        write_retrieval_report(out, metrics, curve, f"Retrieval accuracy: {Path(path).name}", command,
                               label=Path(path).stem)
    return metrics
