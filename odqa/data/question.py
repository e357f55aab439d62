"""One question with its gold answers: what every question set holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Question:
    id: str
    question: str  # from a file read without require_answers: whatever the line held, checked when asked
    answers: list[str] = field(default_factory=list)
    root_id: str | None = None
    evidence_title: str | None = None
    answer_in_evidence: bool | None = None
    split: str | None = None  # a set's own split; None: by the root question (split_of)
    source: str | None = None  # where in the set it comes from (e.g. the trivia list)

    def to_dict(self) -> dict:
        return asdict(self)
