"""Question sets: the bundled ``fanoutqa-wiki`` benchmark and user jsonl files.

``fanoutqa-wiki`` is built from FanOutQA's dev set (bundled ``fanoutqa==1.1.1``):
the single-hop sub-questions (leaves of each decomposition) whose answer is a
string (or a one-item list, i.e. an alias list) and whose evidence page is in
the bundled ``wiki-vital`` corpus: 363 items, 351 unique ids (identical
sub-questions share an id, e.g. "capital of China" appears 5 times).

Splits are fixed by hashing the *root* question id, so sub-questions of one
multi-hop question never cross splits: ``fanoutqa-wiki:train|dev|test``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from odqa.corpus import iter_jsonl, read_corpus
from odqa.errors import InputFormatError, ResourceNotFoundError
from odqa.metrics import contains_normalized
from odqa.resources import bundled_data_path

SPLITS = ("train", "dev", "test")


@dataclass
class Question:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    root_id: str | None = None
    evidence_title: str | None = None
    answer_in_evidence: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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
    return list({(q.id, q.question): q for q in questions}.values())


def read_questions_file(path: str | Path) -> list[Question]:
    """Read a jsonl file of ``{"question": ..., "id"?: ..., "answers"?|"answer"?: [...]}``."""
    path = Path(path)
    if not path.exists():
        raise ResourceNotFoundError(f"questions file '{path}' does not exist")
    out = []
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec.get("question"), str):
            raise InputFormatError(f"{path}:{lineno}: missing 'question' field (a string)")
        if not rec["question"].strip():
            raise InputFormatError(f"{path}:{lineno}: the 'question' field is empty")
        answers = rec.get("answers", rec.get("answer", []))
        if isinstance(answers, str):
            answers = [answers]
        out.append(Question(id=str(rec.get("id", lineno)), question=rec["question"], answers=list(answers)))
    return out


def load_questions(spec: str) -> list[Question]:
    """``fanoutqa-wiki``, ``fanoutqa-wiki:SPLIT`` or a jsonl path."""
    name, _, split = spec.partition(":")
    if name == "fanoutqa-wiki":
        if split and split not in SPLITS:
            raise ResourceNotFoundError(f"unknown split '{split}' of fanoutqa-wiki; use one of {SPLITS}")
        qs = fanoutqa_wiki()
        if split:
            qs = [q for q in qs if split_of(q.root_id) == split]
        return qs
    return read_questions_file(spec)
