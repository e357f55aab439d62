"""The trivia question sets: reading and cleaning the lists, the corpus filter, the splits."""

from __future__ import annotations

import pytest

from odqa.data import trivia
from odqa.data.questions import Question

LIST = """AUTHOR: someone
DESCRIPTION: a test list
"Who  wrote\\nHamlet??":
- William Shakespeare
- Shakespeare
- William Shakespeare
Which year did Apollo 11 land?:
- 1969
Is water wet?:
- yes
No answers here?: []
A nested mess?:
- [not, text]
Just one answer, not in a list?: Paris
"""


@pytest.fixture
def lists_dir(tmp_path, monkeypatch):
    (tmp_path / "general.yaml").write_text(LIST, encoding="utf-8")
    monkeypatch.setattr(trivia, "bundled_data_path", lambda name: tmp_path)
    return tmp_path


def test_a_list_is_read_as_text_cleaned_and_its_bad_entries_counted(lists_dir):
    entries, skipped = trivia.read_list("general")
    assert skipped == 2  # no answers; answers that are not text
    assert entries == [
        ("Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"]),  # whitespace, one '?', answers deduplicated
        ("Which year did Apollo 11 land?", ["1969"]),  # scalars stay text: no int
        ("Is water wet?", ["yes"]),  # ... and no bool
        ("Just one answer, not in a list?", ["Paris"]),
    ]


def test_the_corpus_filter_keeps_answers_held_by_one_to_max_passages():
    texts = ["Hamlet is a tragedy by William Shakespeare.", "The sky is red at dusk.", "A red car.",
             "Red apples.", "Paris is the capital of France."]
    qs = [Question(id="a", question="Who wrote Hamlet?", answers=["Shakespeare"]),
          Question(id="b", question="What colour?", answers=["red"]),  # in 3 passages
          Question(id="c", question="Unknown?", answers=["Atlantis"]),  # in none
          Question(id="d", question="Either?", answers=["red", "Paris"])]  # one answer qualifies
    assert [q.id for q in trivia.answerable(qs, texts, max_passages=2)] == ["a", "d"]
    index = trivia.AnswerIndex(texts)
    assert index.passages_with("william shakespeare") == {0}
    assert index.passages_with("Shakespeare tragedy") == set()  # a token run, not a bag of words
    assert index.passages_with("!!!") == set()


def test_splits_are_fixed_by_the_question_text():
    assert trivia.split_of_text("Who wrote Hamlet?") == trivia.split_of_text("  who WROTE hamlet ")
    splits = [trivia.split_of_text(f"question number {i}?") for i in range(2000)]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "dev", "test")}
    assert shares["train"] == pytest.approx(0.6, abs=0.04) and shares["dev"] == pytest.approx(0.2, abs=0.03)


@pytest.mark.slow
def test_the_real_sets_counts_per_list_and_splits():
    from odqa.data.questions import load_questions

    wiki, closed = load_questions("trivia-wiki"), load_questions("trivia")
    assert (len(closed), len(wiki)) == (2811, 1379)
    assert trivia.split_counts(wiki) == {"train": 833, "dev": 279, "test": 267}
    assert trivia.split_counts(closed) == {"train": 1664, "dev": 596, "test": 551}
    counts = trivia.list_counts()
    assert list(counts) == list(trivia.LISTS)  # only the nine lists are read
    assert {n: c["kept"] for n, c in counts.items()} == {
        "general": 419, "artandliterature": 256, "entertainment": 210, "sports": 130, "elements": 93,
        "music": 70, "computers": 76, "2015": 37, "2016": 88}
    assert sum(c["questions"] - c["duplicates"] - c["skipped"] for c in counts.values()) == len(closed)
    assert [q.id for q in load_questions("trivia-wiki:dev")] == [q.id for q in wiki if q.split == "dev"]
    assert {q.id for q in wiki} <= {q.id for q in closed} and len({q.id for q in closed}) == len(closed)
