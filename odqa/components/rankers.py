"""Re-ranking the retrieved candidates (paper, Section 3): a cross-encoder scoring each passage
jointly with the question, a question encoder tuned against the index's passage vectors (Atlas
query-side fine-tuning), or the frozen LM's likelihood of the question (UPR)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from odqa.components._common import check_question
from odqa.errors import PipelineConfigError
from odqa.lm.cross_encoder import load_scorer, pair_text


FUSIONS = ("none", "rrf")
RRF_K = 60  # Cormack et al. (2009)'s constant


def _reorder(documents: list[Document], scores: list[float], top_k: int | None,
             fusion: str = "none") -> list[Document]:
    """``documents[:len(scores)]`` sorted by ``scores`` (the earlier score kept in
    ``meta["retrieval_score"]``), then any unscored ones in their order; the first ``top_k``.

    ``fusion="rrf"``: sorted instead by reciprocal-rank fusion of the ranker's order and the
    retrieval order, ``1/(60 + rank by score) + 1/(60 + retrieval rank)``, which becomes the
    score (the ranker's own is kept in ``meta["ranker_score"]``).
    """
    scored = [replace(d, score=float(s), meta={**d.meta, "retrieval_score": d.score})
              for d, s in zip(documents, scores)]
    by_score = sorted(range(len(scored)), key=lambda i: scored[i].score, reverse=True)
    if fusion == "rrf":
        rank = {i: r for r, i in enumerate(by_score, start=1)}
        fused = [replace(d, score=1 / (RRF_K + rank[i]) + 1 / (RRF_K + i + 1), meta={**d.meta, "ranker_score": d.score})
                 for i, d in enumerate(scored)]
        ranked = sorted(fused, key=lambda d: d.score, reverse=True)
    else:
        ranked = [scored[i] for i in by_score]
    ranked += list(documents[len(scores):])
    return ranked[:top_k] if top_k else ranked


def _check_ranker_args(candidates: int | None, fusion: str) -> None:
    if candidates is not None and candidates < 1:
        raise PipelineConfigError(f"candidates must be at least 1 (or null for all), got {candidates}")
    if fusion not in FUSIONS:
        raise PipelineConfigError(f"unknown fusion '{fusion}'; use one of {list(FUSIONS)}")


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

    def __init__(self, model: str, top_k: int | None = None, batch_size: int = 32, max_length: int = 512,
                 candidates: int | None = None, fusion: str = "none"):
        """
        :param model: A re-ranker artifact directory, or a CrossEncoder path or HF id.
        :param top_k: Keep this many passages (all when ``None``).
        :param batch_size: Pairs scored per forward pass.
        :param max_length: Token limit of one (question, passage) pair.
        :param candidates: Score only the first N passages; the rest follow in their retrieval
            order (``None``: score all). Each scored pair costs a forward pass of the encoder.
        :param fusion: ``none`` (the ranker's order) or ``rrf`` (reciprocal-rank fusion of the
            ranker's order with the retrieval order).
        """
        _check_ranker_args(candidates, fusion)
        self.fusion = fusion
        self.model = model
        self.top_k = top_k
        self.candidates = candidates
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
        pairs = [(query, pair_text(d.meta.get("title", ""), d.content)) for d in documents[:self.candidates]]
        return {"documents": _reorder(documents, self._score(pairs), top_k or self.top_k, self.fusion)}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, model=self.model, top_k=self.top_k, batch_size=self.batch_size, max_length=self.max_length,
            candidates=self.candidates, fusion=self.fusion,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossEncoderRanker":
        return default_from_dict(cls, data)


@component
class QueryEncoderRanker:
    """Re-orders passages by a tuned question encoder's similarity to each passage's vector in the
    dense index (query-side fine-tuning, :mod:`odqa.lm.query_encoder`): one question embedding per
    question, no passage is re-encoded. ``model`` is an artifact made by
    ``odqa train reranker --student query-encoder``; ``index_dir`` the index the candidates come
    from, built with the artifact's base encoder.

    Usage:
        >>> ranker = QueryEncoderRanker(model="pipelines/artifacts/query-encoder-minilm-answer",
        ...                             index_dir="indexes/wiki-vital", candidates=10)
        >>> ranker.run(query="Who wrote Hamlet?", documents=retrieved)["documents"]  # doctest: +SKIP
    """

    def __init__(self, model: str, index_dir: str, top_k: int | None = None, candidates: int | None = None,
                 fusion: str = "none"):
        """
        :param model: A query-encoder artifact directory.
        :param index_dir: The dense index holding the candidates' vectors.
        :param top_k: Keep this many passages (all when ``None``).
        :param candidates: Score only the first N passages; the rest follow in their retrieval order.
        :param fusion: ``none`` (the ranker's order) or ``rrf`` (fused with the retrieval order).
        """
        _check_ranker_args(candidates, fusion)
        self.model = model
        self.index_dir = str(index_dir)
        self.top_k = top_k
        self.candidates = candidates
        self.fusion = fusion
        self._encoder = None
        self._index = None

    def warm_up(self) -> None:
        if self._encoder is not None:
            return
        from odqa.index import open_index
        from odqa.lm.query_encoder import check_index, load_query_encoder

        encoder, manifest = load_query_encoder(self.model)
        index = open_index(self.index_dir)
        check_index(index, manifest["base_model"])  # the passage vectors are the base's
        self._encoder, self._index = encoder, index

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Candidate passages from ``index_dir``, in retrieval order.
        :param top_k: Overrides the instance's ``top_k``.
        :returns: ``documents`` sorted by the tuned similarity; the earlier score is kept in
            ``meta["retrieval_score"]``.
        """
        import torch

        query = check_question(query)
        if not documents:
            return {"documents": []}
        self.warm_up()
        head = documents[:self.candidates]
        vectors = torch.from_numpy(self._index.vectors([d.id for d in head]))
        with torch.inference_mode():
            scores = self._encoder.scores([query], vectors[None])[0].tolist()
        return {"documents": _reorder(documents, scores, top_k or self.top_k, self.fusion)}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, model=self.model, index_dir=self.index_dir, top_k=self.top_k,
                               candidates=self.candidates, fusion=self.fusion)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QueryEncoderRanker":
        return default_from_dict(cls, data)


@component
class QuestionLikelihoodRanker:
    """Re-orders passages by the frozen LM's likelihood of the question given each passage (UPR,
    Sachan et al., 2022): a zero-shot ranker that needs no training and no labels.

    Only the first ``candidates`` passages are scored (each costs a forward pass over the
    passage); the rest follow in their retrieval order.

    Usage:
        >>> from haystack import Document
        >>> docs = [Document(id="c", content="Canberra is the capital of Australia.", meta={"title": "Canberra"}),
        ...         Document(id="h", content="Hamlet is a tragedy by William Shakespeare.", meta={"title": "Hamlet"})]
        >>> ranker = QuestionLikelihoodRanker(model="smollm2-135m-instruct", top_k=1)
        >>> [d.id for d in ranker.run(query="Who wrote Hamlet?", documents=docs)["documents"]]
        ['h']
    """

    def __init__(self, model: str = "smollm2-135m-instruct", top_k: int | None = None, candidates: int = 20,
                 batch_size: int = 8, max_passage_tokens: int = 256, dtype: str = "float32"):
        """
        :param model: The frozen LM that scores: a bundled name, local path or HF id (the reader's own by default).
        :param top_k: Keep this many passages (all when ``None``).
        :param candidates: Score only the first N passages.
        :param batch_size: Passages per forward pass.
        :param max_passage_tokens: Longest passage read, in tokens (its head is kept).
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        """
        if candidates < 1 or batch_size < 1:
            raise PipelineConfigError(f"candidates and batch_size must be at least 1, got {candidates} and {batch_size}")
        self.model = model
        self.top_k = top_k
        self.candidates = candidates
        self.batch_size = batch_size
        self.max_passage_tokens = max_passage_tokens
        self.dtype = dtype
        self._backbone = None

    def warm_up(self) -> None:
        if self._backbone is None:
            from odqa.lm.backbone import load_backbone

            self._backbone = load_backbone(self.model, self.dtype)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Candidate passages, in retrieval order.
        :param top_k: Overrides the instance's ``top_k``.
        :returns: ``documents`` sorted by mean log p(question | passage); the earlier score is kept
            in ``meta["retrieval_score"]``.
        """
        from odqa.lm.question_likelihood import question_log_likelihoods

        query = check_question(query)
        if not documents:
            return {"documents": []}
        self.warm_up()
        head = documents[: self.candidates]
        scores = question_log_likelihoods(self._backbone, query, [(d.meta.get("title", ""), d.content) for d in head],
                                          self.batch_size, self.max_passage_tokens)
        return {"documents": _reorder(documents, scores, top_k or self.top_k)}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, model=self.model, top_k=self.top_k, candidates=self.candidates,
                               batch_size=self.batch_size, max_passage_tokens=self.max_passage_tokens, dtype=self.dtype)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuestionLikelihoodRanker":
        return default_from_dict(cls, data)
