"""odqa.metrics: SQuAD normalization, EM and F1 over aliases, DPR's has_answer."""

from __future__ import annotations

import pytest

from odqa.metrics import contains_normalized, dpr_tokens, exact_match, f1, has_answer, normalize_answer



@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The Beatles", "beatles"),
        ("an apple a day", "apple day"),
        ("  Paris,   France!! ", "paris france"),
        ("U.S.A.", "usa"),
        ("Theatre of the absurd", "theatre of absurd"),  # "the" only as a whole word
        ("ÉCOLE Normale", "école normale"),  # unicode lowercasing keeps the accent
        ("Zürich\tand\nGenève", "zürich and genève"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_best_over_aliases():
    assert exact_match("the Beatles", ["Rolling Stones", "Beatles"]) == 1.0
    assert exact_match("Beatles.", ["The Beatles"]) == 1.0
    assert exact_match("Paul McCartney", ["John Lennon", "Lennon"]) == 0.0
    assert exact_match("Paris", []) == 0.0
    assert isinstance(exact_match("x", ["x"]), float)


def test_empty_prediction():
    assert exact_match("", ["Paris"]) == 0.0
    assert exact_match(None, ["Paris"]) == 0.0
    assert f1("", ["Paris"]) == 0.0
    assert f1(None, ["Paris"]) == 0.0
    # SQuAD: both sides empty after normalization count as a match
    assert f1("the", ["a"]) == 1.0


def test_f1():
    assert f1("William Shakespeare", ["Shakespeare"]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1("Shakespeare", ["William Shakespeare", "Shakespeare"]) == 1.0  # best alias wins
    assert f1("Christopher Marlowe", ["William Shakespeare"]) == 0.0
    assert f1("x y y", ["y y z"]) == pytest.approx(2 / 3)  # token counts, not sets
    assert f1("anything", []) == 0.0


def test_has_answer_token_boundaries():
    assert not has_answer("The album came out in 19721.", ["1972"])
    assert has_answer("It came out in 1972.", ["1972"])
    assert has_answer("Paris, France", ["Paris"])
    assert not has_answer("Parisian cafés", ["Paris"])
    assert has_answer("in New York City", ["new york"])  # uncased, multi-token
    assert not has_answer("York, New Jersey", ["New York"])  # order matters
    assert has_answer("nothing here", ["absent", "nothing"])  # any alias
    assert not has_answer("some text", [""])  # an empty answer never matches
    assert not has_answer("", ["x"])


def test_has_answer_unicode():
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    assert has_answer(f"Meet at the {composed} tonight", [decomposed])  # NFD on both sides
    assert dpr_tokens("Hello, World!") == ["hello", ",", "world", "!"]


def test_contains_normalized_is_looser_on_punctuation():
    assert contains_normalized("Everest is 8,848 m tall", ["8848 m"])
    assert not has_answer("Everest is 8,848 m tall", ["8848 m"])
    assert not contains_normalized("in 19721", ["1972"])


def test_a_single_gold_string_is_one_alias():
    assert exact_match("Paris", "Paris") == 1.0
    assert exact_match("P", "Paris") == 0.0
    assert f1("Paris", "Paris") == 1.0
    assert not has_answer("a plan of s", "Paris")


def test_paired_bootstrap_interval_brackets_the_difference():
    from odqa.metrics import paired_bootstrap

    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 80 + [0.0] * 20
    ci = paired_bootstrap(a, b, resamples=2000)
    assert ci["diff"] == pytest.approx(0.3)
    assert ci["low"] < 0.3 < ci["high"]
    assert ci["low"] > 0.0  # a clear gain on 100 questions
    same = paired_bootstrap(a, a, resamples=500)
    assert same["diff"] == same["low"] == same["high"] == 0.0


def test_paired_bootstrap_refuses_unpaired_scores():
    from odqa.metrics import paired_bootstrap

    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0, 0.0], [1.0])


def test_the_shared_aggregates():
    from odqa.metrics import percent, qa_scores, recall_at_k, reciprocal_rank

    assert percent([True, False, False]) == 33.33 and percent([]) is None
    scores = qa_scores(["Paris", "the Louvre", "x"], [["Paris"], ["Louvre", "Le Louvre"], ["y"]])
    assert scores["em"] == pytest.approx(200 / 3) and scores["questions"] == 3
    assert reciprocal_rank([False, False, True]) == pytest.approx(1 / 3) and reciprocal_rank([False]) == 0.0
    assert recall_at_k([[False, True], [False, False], [True]], [1, 2]) == {1: 33.33, 2: 66.67}
