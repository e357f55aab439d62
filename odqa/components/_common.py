"""Small helpers shared by odqa's components."""

from __future__ import annotations

from haystack import Document

from odqa.corpus import Passage
from odqa.errors import EmptyQuestionError


def check_question(question: object) -> str:
    """Reject empty or whitespace-only questions with a message that says what to pass."""
    if not isinstance(question, str) or not question.strip():
        raise EmptyQuestionError(f"the question is empty ({question!r}); pass a non-empty question")
    return question.strip()


def to_document(passage: Passage, score: float) -> Document:
    return Document(id=passage.id, content=passage.text, meta={"title": passage.title}, score=float(score))
