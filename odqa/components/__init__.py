"""Haystack components of odqa, one module per family."""

from odqa.components.embedders import QueryEmbedder
from odqa.components.packing import ContextPacker
from odqa.components.rankers import CrossEncoderRanker, QuestionLikelihoodRanker
from odqa.components.readers import FrozenLMReader
from odqa.components.retrievers import BM25Retriever, DenseRetriever

__all__ = ["BM25Retriever", "DenseRetriever", "QueryEmbedder", "CrossEncoderRanker", "QuestionLikelihoodRanker",
           "ContextPacker", "FrozenLMReader"]
