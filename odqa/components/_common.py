"""Small helpers shared by odqa's components."""

from __future__ import annotations

import re
import unicodedata

from haystack import Document

from odqa.data.corpus import Passage
from odqa.errors import BadQuestionError, EmptyQuestionError, QuestionTypeError


MAX_ECHO = 80  # characters of a bad question quoted back in its error


def _echo(value: object) -> str:
    """``repr(value)``, cut to :data:`MAX_ECHO` characters: an error names its input, not all of it."""
    shown = repr(value)
    if len(shown) <= MAX_ECHO:
        return shown
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(shown):,} characters as repr"
    return f"{shown[:MAX_ECHO]}... ({size})"


def normalize_question(question: str) -> str:
    """The form odqa answers: Unicode NFC, control characters dropped, every run of whitespace
    (newlines, tabs, non-breaking spaces) one space, none before closing punctuation, none at
    the ends. ``"Who\\n\\nwrote\\r\\nHamlet\\n?"`` and ``"Who wrote Hamlet?"`` are one question."""
    text = unicodedata.normalize("NFC", question)
    text = _SPACES.sub(" ", "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc"))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()


_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r" ([?!.,;:]+)(?= |$)")


def check_question(question: object) -> str:
    """The question, normalized (:func:`normalize_question`); a typed error for one that is not a
    string, not valid text, empty, or without a single letter or digit."""
    if not isinstance(question, str):
        raise QuestionTypeError(f"the question must be a string, got {type(question).__name__} "
                                f"({_echo(question)}); pass the question as text")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the shell arrive as lone surrogates
        raise BadQuestionError(f"the question {_echo(question)} is not valid UTF-8 text; pass it as UTF-8") from None
    text = normalize_question(question)
    if not text:
        raise EmptyQuestionError(f"the question is empty ({_echo(question)}); pass a non-empty question")
    if not any(ch.isalnum() for ch in text):
        raise BadQuestionError(f"the question {_echo(text)} has no letter or digit, so there is nothing to look "
                               "up; ask a question in words")
    return text


def question_encoder(index=None, encoder: str | None = None, query_encoder: str | None = None):
    """The encoder a dense stage embeds questions with, loaded once per process
    (:func:`odqa.encoders.load_encoder`): ``encoder`` (by default ``index``'s own) and, for a DPR pair,
    ``query_encoder`` (by default ``index``'s). With an ``index`` (an opened
    :class:`~odqa.index.SearchIndex`) it is checked to embed as the index's passages were embedded
    (:class:`~odqa.errors.IndexMismatchError` if not); without one, ``encoder`` is required."""
    from odqa.encoders import load_encoder

    if index is None:
        return load_encoder(encoder, query_encoder)
    name = encoder or index.manifest["encoder"]
    query_name = query_encoder or index.manifest.get("query_encoder")
    loaded = load_encoder(name, query_name if index.manifest["encoder_kind"] == "dpr" else None)
    index.check_encoder(loaded)
    return loaded


def to_document(passage: Passage, score: float) -> Document:
    return Document(id=passage.id, content=passage.text, meta={"title": passage.title}, score=float(score))
