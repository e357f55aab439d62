"""Sparse and dense retrievers over an odqa index (see :mod:`odqa.index`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from haystack import Document, component, default_from_dict, default_to_dict

from odqa.components._common import check_question, question_encoder, to_document
from odqa.index import open_index


@component
class BM25Retriever:
    """Retrieves passages with BM25 (bm25s) from an odqa index.

    Usage:
        >>> retriever = BM25Retriever(index_dir="indexes/wiki-vital", top_k=20)
        >>> retriever.warm_up()
        >>> retriever.run(query="Who wrote Romeo and Juliet?")["documents"][0].meta["title"]
        'Romeo and Juliet'
    """

    def __init__(self, index_dir: str, top_k: int = 20):
        """
        :param index_dir: Directory written by ``odqa index build``.
        :param top_k: How many passages to return.
        """
        self.index_dir = str(index_dir)
        self.top_k = top_k
        self._index = None

    def warm_up(self) -> None:
        if self._index is None:
            index = open_index(self.index_dir)
            index.bm25()
            self._index = index

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param top_k: Overrides the instance's ``top_k``.
        :returns: ``documents``, best first, with BM25 scores; passages scoring 0 are left out.
        """
        return {"documents": self.run_batch([query], top_k)["documents"][0]}

    def run_batch(self, queries: list[str], top_k: int | None = None) -> dict[str, Any]:
        """:meth:`run` for several questions in one search; ``documents`` holds one list per question."""
        queries = [check_question(q) for q in queries]
        self.warm_up()
        if not queries:
            return {"documents": []}
        k = min(top_k or self.top_k, self._index.manifest["count"])
        tokens = self._index.bm25_config().tokenize(queries)
        ids, scores = self._index.bm25().retrieve(tokens, k=k, show_progress=False, n_threads=1)
        passages = self._index.passages
        return {"documents": [[to_document(passages[int(i)], s) for i, s in zip(row_ids, row_scores) if s > 0]
                              for row_ids, row_scores in zip(ids, scores)]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, index_dir=self.index_dir, top_k=self.top_k)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BM25Retriever":
        return default_from_dict(cls, data)


@component
class DenseRetriever:
    """Retrieves passages by inner product of query and passage embeddings (FAISS), as DPR does.

    Usage:
        >>> retriever = DenseRetriever(index_dir="indexes/wiki-vital", top_k=20)
        >>> retriever.warm_up()
        >>> retriever.run(query="Who wrote Romeo and Juliet?")["documents"][0].meta["title"]
        'Romeo and Juliet'

    Over an IVF index (``ivf``, ``ivfpq``) ``nprobe`` trades speed for recall, over an HNSW index
    (``hnsw``, ``hnsw-sq8``) ``ef_search`` does; ``mmap: true`` maps the index file instead of
    reading it into memory (see :meth:`odqa.index.SearchIndex.dense`).
    """

    def __init__(self, index_dir: str, encoder: str | None = None, query_encoder: str | None = None, top_k: int = 20,
                 nprobe: int | None = None, ef_search: int | None = None, mmap: bool = False):
        """
        :param index_dir: Directory written by ``odqa index build``.
        :param encoder: The passage encoder the index must have been built with; by default the
            index's own. A different one fails with :class:`~odqa.errors.IndexMismatchError`.
        :param query_encoder: The question encoder of a DPR pair; by default the index's.
        :param top_k: How many passages to return.
        :param nprobe: IVF indexes only: how many of the index's lists to scan per question; by default
            the manifest's (``faiss.nprobe``). More finds more true neighbours, slower.
        :param ef_search: HNSW indexes only: the graph search's candidate list size; by default the
            manifest's (``faiss.efSearch``). At least ``top_k`` is used, as FAISS does.
        :param mmap: Memory-map the FAISS file instead of reading it: less private memory, pages
            loaded on first use and shared between processes.
        """
        self.index_dir = str(index_dir)
        self.encoder = encoder
        self.query_encoder = query_encoder
        self.top_k = top_k
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.mmap = mmap
        self._index = None
        self._encoder = None
        self._params = None

    def warm_up(self) -> None:
        if self._index is not None:
            return
        index = open_index(self.index_dir)
        self._params = index.search_params(self.nprobe, self.ef_search)  # a knob the index lacks fails here
        encoder = question_encoder(index, self.encoder, self.query_encoder)
        index.dense(self.mmap)
        self._encoder, self._index = encoder, index

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param top_k: Overrides the instance's ``top_k``.
        :returns: ``documents``, best first, scored by inner product.
        """
        return {"documents": self.run_batch([query], top_k)["documents"][0]}

    def run_batch(self, queries: list[str], top_k: int | None = None) -> dict[str, Any]:
        """:meth:`run` for several questions: one encoder pass and one FAISS search; ``documents``
        holds one list per question."""
        queries = [check_question(q) for q in queries]
        self.warm_up()
        if not queries:
            return {"documents": []}
        k = min(top_k or self.top_k, self._index.manifest["count"])
        q = self._encoder.encode_queries(queries).astype(np.float32)
        scores, ids = self._index.dense(self.mmap).search(q, k, params=self._params)
        passages = self._index.passages
        return {"documents": [[to_document(passages[int(i)], s) for i, s in zip(row_ids, row_scores) if i >= 0]
                              for row_ids, row_scores in zip(ids, scores)]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, index_dir=self.index_dir, encoder=self.encoder, query_encoder=self.query_encoder, top_k=self.top_k,
            nprobe=self.nprobe, ef_search=self.ef_search, mmap=self.mmap,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DenseRetriever":
        return default_from_dict(cls, data)
