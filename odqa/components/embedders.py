"""QueryEmbedder: the question as a dense vector, for a Haystack embedding retriever over an odqa index's vectors."""

from __future__ import annotations

from typing import Any

from haystack import component, default_from_dict, default_to_dict

from odqa.components._common import check_question, question_encoder
from odqa.errors import PipelineConfigError


@component
class QueryEmbedder:
    """Embeds the question with a dense index's encoder, as :class:`~odqa.components.retrievers.DenseRetriever`
    does, for a document store's own retriever to search with.

    An index exported to a document store (``odqa index export``) keeps its vectors there, so the
    store's retriever (e.g. ``QdrantEmbeddingRetriever``, whose input is ``query_embedding``) needs
    the question embedded by the same encoder; with ``index_dir`` this component checks that it is.

    Usage:
        >>> embedder = QueryEmbedder(index_dir="indexes/wiki-vital")
        >>> len(embedder.run(query="Who wrote Hamlet?")["embedding"])
        384
    """

    def __init__(self, index_dir: str | None = None, encoder: str | None = None, query_encoder: str | None = None):
        """
        :param index_dir: The odqa index whose vectors the store holds: its encoder is used (unless
            ``encoder`` names one) and checked to embed as the index's passages were embedded.
        :param encoder: The passage encoder the vectors were made with; by default the index's own.
            Required without ``index_dir``.
        :param query_encoder: The question encoder of a DPR pair; by default the index's.
        """
        if index_dir is None and encoder is None:
            raise PipelineConfigError("QueryEmbedder needs index_dir (the odqa index whose vectors the document "
                                      "store holds) or encoder (the model those vectors were made with); set one")
        self.index_dir = None if index_dir is None else str(index_dir)
        self.encoder = encoder
        self.query_encoder = query_encoder
        self._encoder = None

    def warm_up(self) -> None:
        if self._encoder is None:
            from odqa.index import open_index

            index = open_index(self.index_dir) if self.index_dir else None
            self._encoder = question_encoder(index, self.encoder, self.query_encoder)

    @component.output_types(embedding=list[float])
    def run(self, query: str) -> dict[str, Any]:
        """
        :param query: The question.
        :returns: ``embedding``: the question's vector (normalized for a sentence-transformers
            encoder, raw for DPR, as the index's passages).
        """
        return {"embedding": self.run_batch([query])["embedding"][0]}

    def run_batch(self, queries: list[str]) -> dict[str, Any]:
        """:meth:`run` for several questions in one encoder pass; ``embedding`` holds one vector per question."""
        queries = [check_question(q) for q in queries]
        self.warm_up()
        if not queries:
            return {"embedding": []}
        return {"embedding": self._encoder.encode_queries(queries).tolist()}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, index_dir=self.index_dir, encoder=self.encoder, query_encoder=self.query_encoder)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QueryEmbedder":
        return default_from_dict(cls, data)
