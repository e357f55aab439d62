"""Real trivia questions: ``trivia`` and the ``trivia-wiki`` benchmark.

The questions are human-written trivia lists with their accepted answers, shipped as YAML
files by ``red-discordbot==3.5.24`` (GPL-3.0; ``redbot/cogs/trivia/data/lists/``), installed
``--no-deps`` and read as data: the package is never imported. Only :data:`LISTS` are used;
the other lists are off-domain (games, anime, fan trivia) or reserved, and are never read.

- ``trivia[:split]``: the nine lists, cleaned and deduplicated, for closed-book use.
- ``trivia-wiki[:split]``: those whose answer the bundled corpus can supply: some accepted
  answer occurs (DPR ``has_answer``, on passage text) in at least one ``wiki-vital`` passage
  and in at most :data:`MAX_PASSAGES` (an answer found everywhere, like "red", says nothing
  about retrieval).

Cleaning: every YAML scalar is read as text (so ``yes`` and ``1969`` stay as written), the
``AUTHOR``/``DESCRIPTION``/``CONFIG`` keys are skipped, whitespace is collapsed, a question
ending in several ``?`` keeps one, answers are deduplicated in order, and a question in
several lists is kept once (the first list's, with every list's answers). A malformed entry
(no answers, answers that are not a list of text) is skipped and counted, never fatal.

Splits: 60 / 20 / 20 by a stable hash of the normalised question text, the same for both sets.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from odqa.data.question import Question
from odqa.metrics import contains_tokens, dpr_tokens, normalize_answer
from odqa.resources import bundled_data_path

LISTS = ("general", "artandliterature", "entertainment", "sports", "elements", "music", "computers", "2015", "2016")
MAX_PASSAGES = 50
META_KEYS = {"AUTHOR", "DESCRIPTION", "CONFIG"}


def split_of_text(question: str) -> str:
    """train 60% / dev 20% / test 20%, by a stable hash of the normalised question."""
    bucket = int(hashlib.sha1(normalize_answer(question).encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "dev" if bucket < 8 else "test"


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\?{2,}$", "?", text)


@dataclass
class ListStats:
    questions: int = 0  # entries read
    skipped: int = 0  # malformed entries
    duplicates: int = 0  # questions already seen in an earlier list (answers merged there)


def read_list(name: str) -> tuple[list[tuple[str, list[str]]], int]:
    """``([(question, answers)], skipped)`` of one trivia list, cleaned (see module docstring)."""
    import yaml

    path = bundled_data_path("trivia-lists") / f"{name}.yaml"
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)  # scalars stay text
    entries, skipped = [], 0
    for key, value in (data or {}).items() if isinstance(data, dict) else []:
        if key in META_KEYS:
            continue
        question = _clean(key) if isinstance(key, str) else ""
        values = [value] if isinstance(value, str) else value
        if not question or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            skipped += 1
            continue
        answers = list(dict.fromkeys(a for a in (_clean(v) for v in values) if a))
        if not answers:
            skipped += 1
            continue
        entries.append((question, answers))
    return entries, skipped


@lru_cache(maxsize=1)
def _trivia() -> tuple[tuple[Question, ...], dict[str, ListStats]]:
    by_text: dict[str, Question] = {}
    stats = {name: ListStats() for name in LISTS}
    for name in LISTS:
        entries, stats[name].skipped = read_list(name)
        for question, answers in entries:
            stats[name].questions += 1
            key = normalize_answer(question)
            if key in by_text:
                stats[name].duplicates += 1
                q = by_text[key]
                q.answers = list(dict.fromkeys(q.answers + answers))
                continue
            digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
            by_text[key] = Question(id=f"{name}:{digest}", question=question, answers=answers,
                                    split=split_of_text(question), source=name)
    return tuple(by_text.values()), stats


def trivia() -> list[Question]:
    """The nine lists, cleaned and deduplicated (closed-book use; no corpus filter)."""
    return [_copy(q) for q in _trivia()[0]]


class AnswerIndex:
    """Which ``wiki-vital`` passages hold an answer (DPR ``has_answer`` on the passage text),
    through an inverted index of DPR tokens, so a question costs a few set intersections."""

    def __init__(self, texts: list[str]):
        self.tokens = [dpr_tokens(t) for t in texts]
        self.postings: dict[str, set[int]] = {}
        for i, toks in enumerate(self.tokens):
            for t in set(toks):
                self.postings.setdefault(t, set()).add(i)

    def passages_with(self, answer: str) -> set[int]:
        sub = dpr_tokens(answer)
        if not sub:
            return set()
        sets = sorted((self.postings.get(t, set()) for t in set(sub)), key=len)
        candidates = set.intersection(*sets)
        return {i for i in candidates if contains_tokens(self.tokens[i], sub)}


def answerable(questions, texts: list[str], max_passages: int = MAX_PASSAGES) -> list:
    """The questions with an accepted answer in at least one and at most ``max_passages`` of ``texts``."""
    index = AnswerIndex(texts)
    return [q for q in questions if any(1 <= len(index.passages_with(a)) <= max_passages for a in q.answers)]


@lru_cache(maxsize=1)
def _trivia_wiki() -> tuple[Question, ...]:
    from odqa.data.corpus import read_corpus

    return tuple(answerable(_trivia()[0], [p.text for p in read_corpus("wiki-vital")]))


def trivia_wiki() -> list[Question]:
    """The benchmark: the trivia questions whose answer 1 to 50 corpus passages hold."""
    return [_copy(q) for q in _trivia_wiki()]


def list_counts() -> dict[str, dict[str, int]]:
    """Per list: entries read, malformed ones skipped, duplicates of an earlier list, kept in trivia-wiki."""
    stats, kept = _trivia()[1], Counter(q.source for q in _trivia_wiki())
    return {name: {**vars(stats[name]), "kept": kept[name]} for name in LISTS}


def split_counts(questions: list[Question]) -> dict[str, int]:
    counts = Counter(q.split for q in questions)
    return {s: counts.get(s, 0) for s in ("train", "dev", "test")}


def _copy(q: Question) -> Question:  # callers may change their questions; the cache must not see it
    return Question(**q.to_dict())  # asdict copies the answer list too
