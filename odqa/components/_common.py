"""Small helpers shared by odqa's components."""

from __future__ import annotations

from haystack import Document

from odqa.corpus import Passage
from odqa.errors import BadQuestionError, EmptyQuestionError


def check_question(question: object) -> str:
    """Reject empty or whitespace-only questions with a message that says what to pass."""
    if not isinstance(question, str) or not question.strip():
        raise EmptyQuestionError(f"the question is empty ({question!r}); pass a non-empty question")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the shell arrive as lone surrogates
        raise BadQuestionError(
            f"the question {question!r} is not valid UTF-8 text; pass it as UTF-8"
        ) from None
    return question.strip()


def to_document(passage: Passage, score: float) -> Document:
    return Document(id=passage.id, content=passage.text, meta={"title": passage.title}, score=float(score))
