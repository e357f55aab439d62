"""Cross-encoder re-ranking: score each passage jointly with the question (paper, Section 3)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from odqa.components._common import check_question
from odqa.lm.cross_encoder import load_scorer, pair_text


@component
class CrossEncoderRanker:
    """Re-orders passages by a cross-encoder's relevance score for (question, passage).

    ``model`` is either a re-ranker artifact made by ``odqa train reranker`` (a LoRA adapter and
    head on a frozen encoder, named by its ``manifest.json``), or any sentence-transformers
    ``CrossEncoder`` path or id, e.g. ``cross-encoder/ms-marco-MiniLM-L-6-v2``. Refuses an
    encoder without a trained classification head, so a pipeline never ranks with random weights.

    Usage:
        >>> from haystack import Document
        >>> docs = [Document(id="c", content="Canberra is the capital of Australia.", meta={"title": "Canberra"}),
        ...         Document(id="h", content="Hamlet is a tragedy by William Shakespeare.", meta={"title": "Hamlet"})]
        >>> ranker = CrossEncoderRanker(model="pipelines/artifacts/reranker-minilm-synthetic", top_k=1)
        >>> [d.id for d in ranker.run(query="Who wrote Hamlet?", documents=docs)["documents"]]
        ['h']
    """

    def __init__(self, model: str, top_k: int | None = None, batch_size: int = 32, max_length: int = 512):
        """
        :param model: A re-ranker artifact directory, or a CrossEncoder path or HF id.
        :param top_k: Keep this many passages (all when ``None``).
        :param batch_size: Pairs scored per forward pass.
        :param max_length: Token limit of one (question, passage) pair.
        """
        self.model = model
        self.top_k = top_k
        self.batch_size = batch_size
        self.max_length = max_length
        self._score = None

    def warm_up(self) -> None:
        if self._score is None:
            self._score = load_scorer(self.model, self.batch_size, self.max_length)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Candidate passages.
        :param top_k: Overrides the instance's ``top_k``.
        :returns: ``documents`` sorted by cross-encoder score; the earlier score is kept in
            ``meta["retrieval_score"]``.
        """
        query = check_question(query)
        if not documents:
            return {"documents": []}
        self.warm_up()
        pairs = [(query, pair_text(d.meta.get("title", ""), d.content)) for d in documents]
        scores = self._score(pairs)
        ranked = sorted(
            (replace(d, score=float(s), meta={**d.meta, "retrieval_score": d.score}) for d, s in zip(documents, scores)),
            key=lambda d: d.score,
            reverse=True,
        )
        k = top_k or self.top_k
        return {"documents": ranked[:k] if k else ranked}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, model=self.model, top_k=self.top_k, batch_size=self.batch_size, max_length=self.max_length
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossEncoderRanker":
        return default_from_dict(cls, data)
