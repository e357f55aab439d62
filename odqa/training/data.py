"""Training examples for the re-ranker and the reader's soft prompt.

One record type, :class:`TrainExample`, whatever the source: odqa's synthetic cloze data
(:mod:`odqa.training.cloze`), DPR's training json, or NQ-open jsonl. Every example says
whether it is synthetic, so manifests and reports can label what a module learned from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Ctx:
    """A passage attached to a training example (DPR's ``positive_ctxs`` / ``hard_negative_ctxs``)."""

    id: str
    title: str
    text: str


@dataclass
class TrainExample:
    id: str
    question: str
    answers: list[str]
    positives: list[Ctx] = field(default_factory=list)
    hard_negatives: list[Ctx] = field(default_factory=list)
    synthetic: bool = False
    source: str = ""  # where it came from, e.g. "cloze:wiki-vital:<passage id>" or "dpr:<file>"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainExample":
        return cls(
            id=str(d["id"]), question=d["question"], answers=list(d["answers"]),
            positives=[Ctx(**c) for c in d.get("positives", [])],
            hard_negatives=[Ctx(**c) for c in d.get("hard_negatives", [])],
            synthetic=bool(d.get("synthetic", False)), source=d.get("source", ""),
        )
