"""odqa.data.cloze: sentence splitting, answer candidates by type, question rewriting, filters,
determinism, the passage-level train/dev split and type balance."""

from __future__ import annotations

from collections import Counter

import pytest

from odqa.data.corpus import Passage
from odqa.metrics import has_answer
from odqa.data.cloze import (
    KINDS, candidates, clean_title, cloze_split, given_names, make_cloze, make_question, passage_split,
    split_sentences,
)
from odqa.data.negatives import TrainExample

from conftest import CORPUS

APOLLO = Passage(
    "a11", "Apollo 11",
    "Apollo 11 was the American spaceflight that first landed humans on the Moon. Commander Neil Armstrong and "
    "lunar module pilot Buzz Aldrin landed the Apollo Lunar Module Eagle on July 20, 1969. They spent about "
    "21 hours on the lunar surface and collected 47.5 pounds of lunar material.",
)
EVEREST = Passage(
    "ev", "Mount Everest",
    "Mount Everest is Earth's highest mountain above sea level, located in the Mahalangur Himal sub-range of "
    "the Himalayas. It has an elevation of 8,849 m and was first climbed in 1953.",
)
CITY = Passage(
    "c1", "Lagos",
    "Lagos is the largest city in Nigeria. The city has a population of 15.4 million people. It was the capital "
    "of Nigeria until 1991.",
)


def _questions(passage: Passage, names: frozenset[str] = frozenset()) -> dict[str, tuple[str, str]]:
    """answer -> (kind, question) for every candidate of every sentence of ``passage``."""
    out = {}
    for sentence in split_sentences(passage.text):
        for c in candidates(sentence, passage.text, clean_title(passage.title), names):
            q = make_question(sentence, c, passage.title)
            if q:
                out[c.answer] = (c.kind, q)
    return out


def _examples(passages, **kw) -> list[TrainExample]:
    return make_cloze(passages, n=kw.pop("n", 100), corpus_name="test", **kw)


# --- sentences -----------------------------------------------------------------------------------
def test_split_keeps_abbreviations_and_initials_together():
    text = ("J. R. R. Tolkien was born in 1892. He moved to the U.S. Army base near St. Louis with Dr. Smith. "
            "It rained.\nA new line starts here.")
    assert split_sentences(text) == [
        "J. R. R. Tolkien was born in 1892.",
        "He moved to the U.S. Army base near St. Louis with Dr. Smith.",
        "It rained.",
        "A new line starts here.",
    ]


# --- candidates and questions by type ------------------------------------------------------------
def test_full_date_becomes_when():
    kind, q = _questions(APOLLO)["July 20, 1969"]
    assert kind == "DATE"
    assert q == ("Commander Neil Armstrong and lunar module pilot Buzz Aldrin landed the Apollo Lunar Module "
                 "Eagle when?")


def test_bare_year_after_in_becomes_in_what_year():
    kind, q = _questions(EVEREST)["1953"]
    assert kind == "DATE"
    # the opening pronoun is replaced by the title, so the question stands alone
    assert q == "Mount Everest has an elevation of 8,849 m and was first climbed in what year?"


def test_until_year_becomes_until_when():
    kind, q = _questions(CITY)["1991"]
    assert (kind, q) == ("DATE", "Lagos was the capital of Nigeria until when?")


def test_number_with_unit_and_with_scale():
    qs = _questions(EVEREST)
    assert qs["8,849 m"] == ("NUMBER", "Mount Everest has an elevation of how much and was first climbed in 1953?")
    kind, q = _questions(CITY)["15.4 million"]
    # "The city" is a generic head: the title replaces it; "how many" keeps the counted noun
    assert (kind, q) == ("NUMBER", "Lagos has a population of how many people?")
    assert _questions(APOLLO)["21"] == (
        "NUMBER", "Apollo 11 spent about how many hours on the lunar surface and collected 47.5 pounds of lunar "
                  "material?")


def test_percentage():
    p = Passage("x", "Quartz", "Quartz makes up about 12 percent of the crust of the Earth by mass.")
    assert _questions(p)["12 percent"] == ("NUMBER", "Quartz makes up about what percentage of the crust of the "
                                                     "Earth by mass?")


def test_entities_by_cue():
    qs = _questions(Passage("p9", "Penicillin", CORPUS[9]["text"]))
    assert qs["Alexander Fleming"] == ("ENTITY", "Penicillin was discovered by whom in 1928 at St Mary's Hospital "
                                                 "in London?")
    assert qs["London"] == ("ENTITY", "Penicillin was discovered by Alexander Fleming in 1928 at St Mary's "
                                      "Hospital where?")
    assert qs["St Mary's Hospital"][1].endswith("in 1928 where in London?")
    # "the Apollo 11 mission" -> "what mission": the article goes with the masked name
    moon = Passage("p20", "Moon landing", CORPUS[20]["text"])
    assert _questions(moon)["Apollo 11"][1].endswith("during what mission?")


def test_who_needs_evidence_of_a_person():
    moon = Passage("p20", "Moon landing", CORPUS[20]["text"])
    # the shape of a name alone does not make a subject "who" ...
    assert _questions(moon)["Neil Armstrong"][1].startswith("What was the first person")
    # ... a first name from the corpus's articles about people does
    people = [Passage("na", "Neil Armstrong", "Neil Armstrong was an American astronaut. He flew on Gemini 8."),
              Passage("cs", "CSS", "Cascading Style Sheets is a style sheet language used for web pages.")]
    names = given_names(people)
    assert names == {"Neil"}
    assert _questions(moon, names)["Neil Armstrong"][1] == (
        "Who was the first person to walk on the Moon during the Apollo 11 mission?")
    assert _questions(people[1], names)["Cascading Style Sheets"][1] == (
        "What is a style sheet language used for web pages?")
    # an article's own subject is a person when the article says he or she
    assert _questions(people[0], names)["Neil Armstrong"][1] == "Who was an American astronaut?"


def test_sentence_initial_common_noun_is_not_an_entity():
    p = Passage("h", "Hat", "Hats which incorporate visors are headgear. A hat is worn in Paris and London.")
    answers = {c.answer for s in split_sentences(p.text) for c in candidates(s, p.text, "Hat")}
    assert "Hats" not in answers and "A" not in answers
    assert {"Paris and London"} <= answers


def test_every_question_passes_the_filters():
    passages = [Passage(**p) for p in CORPUS] + [APOLLO, EVEREST, CITY]
    examples = _examples(passages, per_passage=3)
    assert len(examples) > 20
    for e in examples:
        (answer,) = e.answers
        text = e.positives[0].text
        assert has_answer(text, [answer])
        assert not has_answer(e.question, [answer]), e.question
        assert 5 <= len(e.question.split()) <= 40
        assert len(answer.split()) <= 6
        assert e.question.endswith("?") and e.question[0].isupper()
        assert e.kind in KINDS


def test_damaged_and_unbalanced_sentences_are_skipped():
    p = Passage("d", "Field", "The field  of numbers was defined in 1871 by Richard Dedekind. "
                              "The book (published in 1872 was read by Georg Cantor in Halle.")
    assert _examples([p]) == []


def test_title_answers_are_at_most_half():
    # every passage below has only its title as a candidate; half of those are skipped, seeded
    passages = [Passage(str(i), f"Zorblax{i}", f"Zorblax{i} is a word that nobody has ever used before.")
                for i in range(200)]
    examples = _examples(passages, n=1000)
    assert 0.3 * len(passages) < len(examples) <= 0.7 * len(passages)
    assert all(e.question.startswith("What is a word") for e in examples)


# --- records, determinism, splits, balance -------------------------------------------------------
def test_example_fields():
    (e, *_) = _examples([APOLLO], per_passage=1)
    assert e.id == "cloze-a11-0"
    assert e.synthetic is True
    assert e.source == "cloze:test:a11"
    assert [c.id for c in e.positives] == ["a11"] and e.positives[0].text == APOLLO.text
    assert e.hard_negatives == []
    assert TrainExample.from_dict(e.to_dict()) == e


def test_per_passage_and_n_limits():
    passages = [Passage(**p) for p in CORPUS] + [APOLLO, EVEREST, CITY]
    examples = _examples(passages, per_passage=2, n=1000)
    per = Counter(e.positives[0].id for e in examples)
    assert max(per.values()) <= 2
    assert len(_examples(passages, per_passage=2, n=7)) == 7
    assert len({e.id for e in examples}) == len(examples)


def test_deterministic_for_a_seed():
    passages = [Passage(**p) for p in CORPUS]
    a = [e.to_dict() for e in _examples(passages, seed=3)]
    assert a == [e.to_dict() for e in _examples(passages, seed=3)]
    assert a != [e.to_dict() for e in _examples(passages, seed=4)]


def test_split_by_passage_is_stable_and_about_ten_percent():
    ids = [str(i) for i in range(5000)]
    splits = [passage_split(i) for i in ids]
    assert splits == [passage_split(i) for i in ids]
    assert 0.07 < splits.count("dev") / len(ids) < 0.13
    # every example of a passage falls on the same side, whatever its index k
    examples = _examples([Passage(**p) for p in CORPUS] + [APOLLO, EVEREST, CITY], per_passage=3)
    by_passage: dict[str, set[str]] = {}
    for e in examples:
        by_passage.setdefault(e.positives[0].id, set()).add(cloze_split(e))
    assert all(len(s) == 1 for s in by_passage.values())
    assert cloze_split(examples[0]) == passage_split(examples[0].positives[0].id)


def test_type_balance_on_the_fixture_corpus():
    passages = [Passage(**p) for p in CORPUS]
    examples = _examples(passages, n=40, per_passage=2)
    kinds = Counter(e.kind for e in examples)
    assert set(kinds) == set(KINDS)
    assert max(kinds.values()) <= 0.5 * 40


@pytest.mark.parametrize("title, clean", [("Python (programming language)", "Python"), ("Paris", "Paris")])
def test_clean_title(title, clean):
    assert clean_title(title) == clean


# --- noisy cloze ----------------------------------------------------------------------------------
def test_noisy_question_keeps_wh_phrase_and_title_and_shortens():
    import random

    from odqa.data.cloze import noisy_question

    q = ("The Fahrenheit scale is a temperature scale based on one proposed in what year by the physicist "
         "Daniel Gabriel Fahrenheit?")
    for seed in range(20):
        noisy = noisy_question(q, "Fahrenheit", random.Random(seed), keep=0.5, max_words=8)
        words = noisy.rstrip("?").split()
        assert noisy.endswith("?") and len(words) <= 8
        assert "what year" in noisy and "Fahrenheit" in noisy
        assert not {"the", "a", "is", "in", "by", "on"} & {w.lower() for w in words[1:]}
    # keep=1 drops only function words (and nothing past max_words)
    assert noisy_question("Who wrote the play Hamlet?", "Hamlet", random.Random(0), keep=1.0) == "Who wrote play Hamlet?"


def test_add_noise_keeps_answers_sources_and_splits():
    from odqa.data.cloze import add_noise

    examples = _examples([APOLLO, EVEREST, CITY], per_passage=3)
    noisy = add_noise(examples, keep=0.3, seed=1)
    assert len(noisy) == len(examples)
    for before, after in zip(examples, noisy):
        assert after.id == before.id + "-noisy" and after.answers == before.answers
        assert after.source == before.source and cloze_split(after) == cloze_split(before)
        assert len(after.question.split()) <= len(before.question.split())
    assert [e.question for e in noisy] == [e.question for e in add_noise(examples, keep=0.3, seed=1)]
