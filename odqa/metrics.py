"""NQ-open metrics, by the conventions of DPR, FiD and the paper.

- :func:`exact_match` / :func:`f1`: SQuAD normalization, best over gold aliases.
- :func:`has_answer`: DPR's answer-in-passage check (uncased token sequences from
  DPR's simple tokenizer: runs of letters/digits/marks, and single other non-space chars).
- :func:`paired_bootstrap`: a confidence interval for the difference of two systems'
  mean per-question scores on the same questions.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

import regex

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
# DPR's SimpleTokenizer (dpr/utils/tokenizers.py): alphanumeric runs, or one non-space char
_DPR_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def normalize_answer(s: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_list(golds: str | Iterable[str]) -> list[str]:
    """A bare string is one gold answer, not a sequence of characters."""
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: Iterable[str]) -> float:
    golds = _as_list(golds)
    p = normalize_answer(prediction or "")
    return float(any(p == normalize_answer(g) for g in golds))


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: Iterable[str]) -> float:
    golds = _as_list(golds)
    return max((_f1(prediction or "", g) for g in golds), default=0.0)


def dpr_tokens(text: str) -> list[str]:
    return [t.lower() for t in _DPR_TOKEN.findall(unicodedata.normalize("NFD", text))]


def contains_tokens(seq: list[str], sub: list[str]) -> bool:
    """Whether the token run ``sub`` occurs in ``seq`` (DPR's has_answer on token lists)."""
    n = len(sub)
    if n == 0:
        return False
    first = sub[0]
    return any(seq[i] == first and seq[i : i + n] == sub for i in range(len(seq) - n + 1))


def has_answer(text: str, answers: Iterable[str]) -> bool:
    """DPR's ``has_answer``: does any answer's token sequence occur in ``text``'s?"""
    toks = dpr_tokens(text)
    return any(contains_tokens(toks, dpr_tokens(a)) for a in _as_list(answers))


def contains_normalized(text: str, answers: Iterable[str]) -> bool:
    """Does a SQuAD-normalized answer occur as a whole-token run in the normalized text?

    Looser than :func:`has_answer` about punctuation (``"8,611 m"`` matches ``8611 m``);
    used to say whether a prediction *contains* the answer, and for the benchmark's
    answer-in-evidence flag.
    """
    toks = normalize_answer(text).split()
    return any(contains_tokens(toks, normalize_answer(a).split()) for a in _as_list(answers))


def percent(flags: Iterable[bool | float]) -> float | None:
    """The mean of per-question 0/1 (or 0-1) scores, in percent to two decimals; ``None`` for none."""
    flags = list(flags)
    return round(100 * sum(flags) / len(flags), 2) if flags else None


def qa_scores(predictions: Iterable[str], golds: Iterable[Iterable[str]]) -> dict:
    """``{"em", "f1", "questions"}``: mean EM and F1 (0-100, unrounded) of predictions against their
    gold alias lists."""
    pairs = list(zip(predictions, golds))
    n = max(len(pairs), 1)
    return {"em": 100.0 * sum(exact_match(p, g) for p, g in pairs) / n,
            "f1": 100.0 * sum(f1(p, g) for p, g in pairs) / n, "questions": len(pairs)}


def reciprocal_rank(ranked_flags: Iterable[bool]) -> float:
    """1 / the rank of the first relevant item (0 when there is none): MRR's per-question term."""
    return next((1.0 / (r + 1) for r, flag in enumerate(ranked_flags) if flag), 0.0)


def recall_at_k(ranked_flags: list[list[bool]], ks: Iterable[int]) -> dict[int, float | None]:
    """Top-k retrieval accuracy: the share (in percent) of questions with a relevant item in the first k."""
    return {k: percent(any(flags[:k]) for flags in ranked_flags) for k in ks}


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean difference ``b - a`` of per-question scores on the same questions, with a bootstrap CI.

    Questions are resampled with replacement ``resamples`` times (Efron & Tibshirani); the
    interval is the percentile interval at ``level``. Scores are on the 0-100 scale if the
    inputs are. Returns ``{"diff", "low", "high", "n", "resamples"}``.
    """
    import numpy as np

    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or len(a_arr) == 0:
        raise ValueError(f"paired scores need two equal-length non-empty lists, got {len(a)} and {len(b)}")
    diff = b_arr - a_arr
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"diff": float(diff.mean()), "low": float(low), "high": float(high), "n": len(diff),
            "resamples": resamples}
