"""Training examples for the re-ranker and the reader's soft prompt.

One record type, :class:`TrainExample`, whatever the source: odqa's synthetic cloze data
(:mod:`odqa.data.cloze`), DPR's training json, or NQ-open jsonl. Every example says
whether it is synthetic, so manifests and reports can label what a module learned from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from odqa.data.corpus import iter_jsonl, read_json
from odqa.errors import InputFormatError, TextEncodingError, TrainingDataError
from odqa.metrics import has_answer
from odqa.runs import atomic_write_bytes


@dataclass
class Ctx:
    """A passage attached to a training example (DPR's ``positive_ctxs`` / ``hard_negative_ctxs``)."""

    id: str
    title: str
    text: str


@dataclass
class TrainExample:
    id: str
    question: str
    answers: list[str]
    positives: list[Ctx] = field(default_factory=list)
    hard_negatives: list[Ctx] = field(default_factory=list)
    synthetic: bool = False
    source: str = ""  # where it came from, e.g. "cloze:wiki-vital:<passage id>" or "dpr:<file>"
    kind: str = ""  # the answer type of a cloze example: DATE, NUMBER or ENTITY ("" when unknown)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainExample":
        return cls(
            id=str(d["id"]), question=d["question"], answers=list(d["answers"]),
            positives=[Ctx(**c) for c in d.get("positives", [])],
            hard_negatives=[Ctx(**c) for c in d.get("hard_negatives", [])],
            synthetic=bool(d.get("synthetic", False)), source=d.get("source", ""), kind=d.get("kind", ""),
        )


# --- reading and writing ---------------------------------------------------------------------
def _fix_hint() -> str:
    return ("use odqa jsonl (TrainExample records), DPR training json (a list of {question, answers, "
            "positive_ctxs, hard_negative_ctxs}) or NQ-open jsonl ({question, answer})")


def _check_question(where: str, rec: dict) -> str:
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise TrainingDataError(f"{where}: missing or empty 'question'; every example needs its question text")
    return q.strip()


def _check_answers(where: str, rec: dict, key: str) -> list[str]:
    if key not in rec:
        raise TrainingDataError(f"{where}: missing '{key}'; give the gold answers as a list of strings")
    answers = rec[key]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise TrainingDataError(f"{where}: '{key}' must be a list of strings, got {type(rec[key]).__name__}")
    answers = [a.strip() for a in answers if a.strip()]
    if not answers:
        raise TrainingDataError(f"{where}: '{key}' is empty; give at least one answer, or drop the example")
    return answers


def _ctxs(where: str, items: object, field_name: str, id_keys: tuple[str, ...]) -> list[Ctx]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise TrainingDataError(f"{where}: '{field_name}' must be a list of passages")
    out = []
    for j, c in enumerate(items):
        if not isinstance(c, dict) or not isinstance(c.get("text"), str):
            raise TrainingDataError(f"{where}: '{field_name}'[{j}] needs a 'text' string (and optionally 'title')")
        pid = next((c[k] for k in id_keys if c.get(k) is not None), "")
        out.append(Ctx(id=str(pid), title=str(c.get("title") or ""), text=c["text"]))
    return out


def _from_jsonl_record(path: Path, lineno: int, rec: dict) -> TrainExample:
    where = f"{path}:{lineno}"
    question = _check_question(where, rec)
    if "answers" not in rec and "answer" in rec:  # NQ-open: no passages, they are mined
        return TrainExample(id=str(rec.get("id", f"{path.stem}-{lineno}")), question=question,
                            answers=_check_answers(where, rec, "answer"), synthetic=False,
                            source=f"nq-open:{path.name}")
    answers = _check_answers(where, rec, "answers")
    return TrainExample(
        id=str(rec.get("id", f"{path.stem}-{lineno}")), question=question, answers=answers,
        positives=_ctxs(where, rec.get("positives"), "positives", ("id",)),
        hard_negatives=_ctxs(where, rec.get("hard_negatives"), "hard_negatives", ("id",)),
        synthetic=bool(rec.get("synthetic", False)), source=str(rec.get("source") or f"jsonl:{path.name}"),
        kind=str(rec.get("kind") or ""),
    )


def _read_dpr_json(path: Path) -> list[TrainExample]:
    data = read_json(path, TrainingDataError)
    if not isinstance(data, list):
        raise TrainingDataError(f"{path}: a .json training file must hold a JSON list of examples; {_fix_hint()}")
    out = []
    for i, rec in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(rec, dict):
            raise TrainingDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        negatives = rec.get("hard_negative_ctxs") or rec.get("negative_ctxs") or []
        field_name = "hard_negative_ctxs" if rec.get("hard_negative_ctxs") else "negative_ctxs"
        ids = ("passage_id", "psg_id", "id")
        out.append(TrainExample(
            id=str(rec.get("id", f"dpr-{path.stem}-{i}")), question=_check_question(where, rec),
            answers=_check_answers(where, rec, "answers"),
            positives=_ctxs(where, rec.get("positive_ctxs"), "positive_ctxs", ids),
            hard_negatives=_ctxs(where, negatives, field_name, ids), synthetic=False, source=f"dpr:{path.name}",
        ))
    return out


def read_training_data(path: str | Path) -> list[TrainExample]:
    """Read training examples from odqa jsonl, DPR training json or NQ-open jsonl.

    The format is told by extension and content: a ``.jsonl`` file is jsonl; any other whose first
    character is ``[`` is DPR json, and the rest jsonl, where each line with ``answers`` is an odqa record (``TrainExample.to_dict()``)
    and each with only ``answer`` is NQ-open (no passages: run :func:`mine_hard_negatives`).

    :param path: The file. Every bad line or entry raises :class:`~odqa.errors.TrainingDataError`
        (or :class:`~odqa.errors.TextEncodingError`) naming the file and the line or entry.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"training file '{path}' does not exist; {_fix_hint()}")
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix != ".jsonl" and head.startswith(b"["):
        examples = _read_dpr_json(path)
    else:
        try:
            examples = [_from_jsonl_record(path, lineno, rec) for lineno, rec in iter_jsonl(path)]
        except (TrainingDataError, TextEncodingError):
            raise
        except InputFormatError as e:  # invalid JSON on a line: same message, the training-data type
            raise TrainingDataError(str(e)) from None
    if not examples:
        raise TrainingDataError(f"no training examples in {path}; {_fix_hint()}")
    return examples


def _distant_answer_ok(answer: str) -> bool:
    """Whether an answer can mark a passage as positive by string match (DPR's distant supervision).

    yes/no and short numbers ("3", "12") match almost any passage, so they cannot.
    """
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return False
    return not (a.replace(".", "", 1).isdigit() and len(a) < 4)


def examples_from_questions(spec: str, exclude: str | None = None) -> tuple[list[TrainExample], dict]:
    """Training examples (no passages yet) from a question set, for :func:`mine_hard_negatives`.

    :param spec: A question set as :func:`odqa.data.questions.load_questions` takes it, e.g.
        ``fanoutqa-closedbook:train``: real questions, labelled ``synthetic=False``.
    :param exclude: Another question set whose questions (by id and text) are left out, e.g.
        ``fanoutqa-wiki`` to keep the benchmark's questions out of training entirely.
    :returns: ``(examples, stats)``; questions whose answers cannot be matched in text (yes/no,
        numbers under 4 characters) are dropped and counted.
    """
    from odqa.data.questions import dedup, load_questions

    questions = dedup(load_questions(spec, require_answers=True))
    excluded = {(q.id, q.question) for q in load_questions(exclude)} if exclude else set()
    stats = {"questions": len(questions), "excluded": 0, "unmatchable_answer": 0}
    out = []
    for q in questions:
        if (q.id, q.question) in excluded:
            stats["excluded"] += 1
            continue
        answers = [a for a in q.answers if _distant_answer_ok(a)]
        if not answers:
            stats["unmatchable_answer"] += 1
            continue
        out.append(TrainExample(id=q.id, question=q.question, answers=answers, synthetic=False, source=spec))
    return out, stats


def write_training_data(path: str | Path, examples: list[TrainExample]) -> Path:
    """Write ``examples`` as odqa jsonl, all at once (a killed run never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples)
    atomic_write_bytes(path, lines.encode("utf-8"))
    return path


# --- hard negatives --------------------------------------------------------------------------
def mine_hard_negatives(
    examples: list[TrainExample], index_dir: str | Path, n: int = 8, depth: int = 50, encoder: str | None = None,
    batch_size: int = 256, progress: bool = True,
) -> tuple[list[TrainExample], dict]:
    """Give every example up to ``n`` hard negatives from BM25 and dense retrieval over an index (as DPR does).

    A hard negative is a retrieved passage (top ``depth`` of BM25 and of FAISS, taken alternately,
    best first) whose text does not contain an answer (DPR's ``has_answer``) and that is not a
    positive. Negatives an example already has (DPR's ``hard_negative_ctxs``) are kept first when they
    pass the same check. An example without positives (NQ-open) gets the best-ranked retrieved
    passage that has an answer as its positive, or is dropped (counted in the stats).

    :param examples: The examples; they are not modified, new ones are returned.
    :param index_dir: An index built by ``odqa index build``.
    :param n: Hard negatives per example, at most.
    :param depth: How deep to read each retriever's ranking.
    :param encoder: The dense encoder; by default the index's own (``minilm-l6`` for the bundled index).
    :param batch_size: Questions encoded per call.
    :param progress: Show a progress bar.
    :returns: ``(examples, stats)``: the kept examples, and counts of what was mined and dropped.
    """
    from tqdm.auto import tqdm

    from odqa.encoders import load_encoder
    from odqa.index import open_index

    index = open_index(index_dir)
    passages = index.passages
    name = encoder or index.manifest["encoder"]
    enc = load_encoder(name, index.manifest.get("query_encoder") if index.manifest["encoder_kind"] == "dpr" else None)
    index.check_encoder(enc)
    bm25, faiss_index, bm25_config = index.bm25(), index.dense(), index.bm25_config()
    k = min(depth, len(passages))

    out: list[TrainExample] = []
    stats = {"examples": len(examples), "kept": 0, "positives_mined": 0, "dropped_no_positive": 0,
             "negatives": 0, "short_of_negatives": 0}
    bar = tqdm(total=len(examples), desc="mining hard negatives", unit="q", disable=not progress)
    for b in range(0, len(examples), batch_size):
        batch = examples[b : b + batch_size]
        questions = [e.question for e in batch]
        bm25_ids, bm25_scores = bm25.retrieve(bm25_config.tokenize(questions), k=k, show_progress=False, n_threads=1)
        _, dense_ids = faiss_index.search(enc.encode_queries(questions).astype(np.float32), k)
        for i, ex in enumerate(batch):
            sparse = [int(j) for j, s in zip(bm25_ids[i], bm25_scores[i]) if s > 0]
            ranked = list(dict.fromkeys(_interleave(sparse, [int(j) for j in dense_ids[i] if j >= 0])))
            ex = _with_mined(ex, [passages[j] for j in ranked], n)
            if ex is None:
                stats["dropped_no_positive"] += 1
                continue
            if not examples[b + i].positives:
                stats["positives_mined"] += 1
            stats["negatives"] += len(ex.hard_negatives)
            stats["short_of_negatives"] += len(ex.hard_negatives) < n
            out.append(ex)
        bar.update(len(batch))
    bar.close()
    stats["kept"] = len(out)
    stats["mean_negatives"] = round(stats["negatives"] / len(out), 2) if out else 0.0
    return out, stats


def _interleave(a: list[int], b: list[int]) -> list[int]:
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


def _with_mined(ex: TrainExample, retrieved: list, n: int) -> TrainExample | None:
    """``ex`` with its positive (when it had none) and hard negatives filled from ``retrieved``, or None."""
    positives = list(ex.positives)
    if not positives:
        hit = next((p for p in retrieved if has_answer(p.text, ex.answers)), None)
        if hit is None:
            return None
        positives = [Ctx(id=hit.id, title=hit.title, text=hit.text)]
    pos_ids = {c.id for c in positives if c.id}
    pos_texts = {c.text for c in positives}
    negatives: list[Ctx] = []
    seen: set[str] = set()
    candidates = list(ex.hard_negatives) + [Ctx(id=p.id, title=p.title, text=p.text) for p in retrieved]
    for c in candidates:
        if len(negatives) >= n:
            break
        key = c.id or c.text
        if key in seen or (c.id and c.id in pos_ids) or c.text in pos_texts or has_answer(c.text, ex.answers):
            continue
        seen.add(key)
        negatives.append(c)
    return replace(ex, positives=positives, hard_negatives=negatives)
