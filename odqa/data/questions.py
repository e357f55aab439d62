"""Question sets: the bundled ``fanoutqa-wiki`` benchmark, ``trivia-wiki`` (:mod:`odqa.data.trivia`) and user files.

``fanoutqa-wiki`` is built from FanOutQA's dev set (bundled ``fanoutqa==1.1.1``):
the single-hop sub-questions (leaves of each decomposition) whose answer is a
string (or a one-item list, i.e. an alias list) and whose evidence page is in
the bundled ``wiki-vital`` corpus: 363 items, 351 unique ids (identical
sub-questions share an id, e.g. "capital of China" appears 5 times).

``fanoutqa-closedbook`` is the larger closed-book set: every dev single-hop sub-question
with a single scorable answer (1,822 items; 1,807 unique), whatever its evidence page.

Splits are fixed by hashing the *root* question id, so sub-questions of one
multi-hop question never cross splits: ``fanoutqa-wiki:train|dev|test`` (same for
``fanoutqa-closedbook``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from odqa.data.corpus import decode_lines, iter_jsonl, read_corpus
from odqa.data.question import Question
from odqa.errors import InputFormatError, ResourceNotFoundError
from odqa.metrics import contains_normalized
from odqa.resources import bundled_data_path

SPLITS = ("train", "dev", "test")


def split_of(root_id: str) -> str:
    """train 40% / dev 30% / test 30%, by a stable hash of the root question id."""
    bucket = int(hashlib.sha1(root_id.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 4 else "dev" if bucket < 7 else "test"


def _leaves(node: dict, root_id: str):
    for child in node.get("decomposition") or []:
        if child.get("decomposition"):
            yield from _leaves(child, root_id)
        else:
            yield child, root_id


def _closed_book_answer(ans) -> str | None:
    """A gold answer as text, or None when it is not one EM can score.

    Strings and one-item (alias) lists pass; numbers become their text; booleans become
    yes/no. Multi-item lists are *sets* (every item needed) and dicts are tables: left out.
    """
    if isinstance(ans, list) and len(ans) == 1:
        ans = ans[0]
    if isinstance(ans, bool):
        return "yes" if ans else "no"
    if isinstance(ans, (int, float)):
        return str(ans)
    return ans if isinstance(ans, str) and ans.strip() else None


def fanoutqa_closedbook() -> list[Question]:
    """Every FanOutQA dev single-hop sub-question with a scorable single answer (1,822 items).

    For closed-book work: no corpus filter. Of the 2,142 leaves, 306 with multi-item set
    answers, 13 with table (dict) answers and 1 with an empty answer are left out of EM scoring.
    """
    data = json.loads(bundled_data_path("fanoutqa-dev").read_text(encoding="utf-8"))
    out = []
    for root in data:
        for leaf, root_id in _leaves(root, root["id"]):
            ans = _closed_book_answer(leaf.get("answer"))
            if ans is not None:
                out.append(Question(id=leaf["id"], question=leaf["question"], answers=[ans], root_id=root_id,
                                    evidence_title=(leaf.get("evidence") or {}).get("title")))
    return out


def fanoutqa_wiki() -> list[Question]:
    """Build the bundled benchmark (363 questions; see module docstring)."""
    data = json.loads(bundled_data_path("fanoutqa-dev").read_text(encoding="utf-8"))
    passages = {p.title: p.text for p in read_corpus("wiki-vital")}
    out = []
    for root in data:
        for leaf, root_id in _leaves(root, root["id"]):
            ans = leaf.get("answer")
            if isinstance(ans, list) and len(ans) == 1 and isinstance(ans[0], str):
                ans = ans[0]  # a one-item list is an alias list
            if not isinstance(ans, str):
                continue  # numbers, booleans, dicts and multi-item *sets* are out of EM scope
            title = (leaf.get("evidence") or {}).get("title")
            if title not in passages:
                continue
            out.append(
                Question(
                    id=leaf["id"],
                    question=leaf["question"],
                    answers=[ans],
                    root_id=root_id,
                    evidence_title=title,
                    answer_in_evidence=contains_normalized(passages[title], [ans]),
                )
            )
    return out


def dedup(questions: list[Question]) -> list[Question]:
    """Keep the first of each (id, question): FanOutQA repeats identical sub-questions under one id."""
    return list({(q.id, q.question if isinstance(q.question, str) else repr(q.question)): q
                 for q in questions}.values())


def _answer_list(value, where: str, required: bool) -> list[str]:
    if value is None:
        if required:
            raise InputFormatError(f"{where}: missing 'answer' field (a list of gold answer strings)")
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise InputFormatError(f"{where}: 'answer' must be a list of strings, got {value!r}")
    if required and not [a for a in value if a.strip()]:
        raise InputFormatError(f"{where}: empty answer list; every question needs at least one gold answer")
    return value


def _read_jsonl_questions(path: Path, require_answers: bool) -> list[Question]:
    out = []
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if require_answers:  # a scored set with a bad question is a broken set; a run answers around it
            if not isinstance(rec.get("question"), str):
                raise InputFormatError(f"{where}: missing 'question' field (a string)")
            if not rec["question"].strip():
                raise InputFormatError(f"{where}: the 'question' field is empty")
        answers = _answer_list(rec.get("answers", rec.get("answer")), where, require_answers)
        out.append(Question(id=str(rec.get("id", lineno)), question=rec.get("question"), answers=answers))
    return out


def _read_dpr_csv(path: Path, require_answers: bool) -> list[Question]:
    """DPR's ``nq-test.csv``: ``question<TAB>["answer", ...]`` per line, no header."""
    import ast

    out = []
    for lineno, line in decode_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        question, sep, raw = line.partition("\t")
        if not sep:
            raise InputFormatError(f"{where}: expected `question<TAB>[answers]`, found no tab")
        if require_answers and not question.strip():
            raise InputFormatError(f"{where}: the question is empty")
        try:
            answers = json.loads(raw)
        except json.JSONDecodeError:
            try:  # DPR's files write some lists as Python literals (single quotes)
                answers = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise InputFormatError(f"{where}: the answers {raw[:60]!r} are not a JSON list") from None
        out.append(Question(id=str(lineno), question=question, answers=_answer_list(answers, where, require_answers)))
    return out


def read_questions_file(path: str | Path, require_answers: bool = False) -> list[Question]:
    """Read questions from a file, naming the line of any malformed record.

    ``.jsonl``: one ``{"question": ..., "id"?: ..., "answer"|"answers"?: [...]}`` per line
    (NQ-open's format). ``.csv``/``.tsv``: DPR's ``nq-test.csv``. With ``require_answers``
    (evaluation, training), every question needs a non-empty question and answer list; without
    it (``odqa run``), a missing, empty or non-string question is kept as it is, so that the run
    answers it with an error record and goes on to the next.
    """
    path = Path(path)
    if not path.exists():
        raise ResourceNotFoundError(f"questions file '{path}' does not exist")
    if path.suffix in (".csv", ".tsv"):
        return _read_dpr_csv(path, require_answers)
    return _read_jsonl_questions(path, require_answers)


BUNDLED_SETS = ("fanoutqa-wiki", "fanoutqa-closedbook", "trivia-wiki", "trivia")


def is_question_set(spec: str) -> bool:
    """Whether ``spec`` names a bundled question set (``NAME``, ``NAME:SPLIT``, or a ``+`` mixture of
    them) rather than a file."""
    return all(part.strip().partition(":")[0] in BUNDLED_SETS for part in str(spec).split("+"))


def load_questions(spec: str, require_answers: bool = False) -> list[Question]:
    """``fanoutqa-wiki[:SPLIT]``, ``fanoutqa-closedbook[:SPLIT]``, ``trivia-wiki[:SPLIT]``,
    ``trivia[:SPLIT]``, or a questions file (see :func:`read_questions_file`).

    ``A+B`` is a mixture: A's questions, then B's (e.g. ``trivia-wiki:train+fanoutqa-wiki:train``).
    A file whose own name holds a ``+`` is read as that file.
    """
    if "+" in spec and not Path(spec).exists():
        parts = spec.split("+")
        if not all(p.strip() for p in parts):
            raise ResourceNotFoundError(
                f"question set mixture '{spec}' has an empty part; write A+B, e.g. "
                "trivia-wiki:train+fanoutqa-wiki:train")
        return [q for part in parts for q in load_questions(part.strip(), require_answers)]
    return _load_one(spec, require_answers)


def _load_one(spec: str, require_answers: bool) -> list[Question]:
    from odqa.data import trivia

    name, _, split = spec.partition(":")
    builders = {"fanoutqa-wiki": fanoutqa_wiki, "fanoutqa-closedbook": fanoutqa_closedbook,
                "trivia-wiki": trivia.trivia_wiki, "trivia": trivia.trivia}
    if name in builders:
        if split and split not in SPLITS:
            raise ResourceNotFoundError(f"unknown split '{split}' of {name}; use one of {SPLITS}")
        qs = builders[name]()
        if split:
            qs = [q for q in qs if (q.split or split_of(q.root_id)) == split]
        return qs
    return read_questions_file(spec, require_answers)
