"""ContextPacker: fill the reader's context window greedily, best-ranked passage first (paper, Section 3)."""

from __future__ import annotations

from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from odqa.components._common import check_question
from odqa.errors import PipelineConfigError
from odqa.lm.prompting import ReaderPrompt, format_passages, get_template
from odqa.lm.soft_prompt import soft_prompt_length


ORDERS = ("best-first", "best-last")
MAX_CACHED_COSTS = 500_000  # passage token counts kept per tokenizer (a 10k-passage corpus needs 10k)
_COSTS: dict[str, dict[str, int]] = {}  # tokenizer (model name) -> formatted passage -> its tokens, per process


@component
class ContextPacker:
    """Adds passages in ranked order until the reader's token budget is full, and reports what it cut.

    The budget is ``context_length`` minus the rendered prompt (instruction, examples,
    question), the soft prompt and ``max_new_tokens`` of room for the answer, all counted
    in the reader's own tokens. A passage that does not fit is skipped whole (never
    truncated) and a later, shorter one may still fit. Its id is reported in ``dropped_ids``.

    Usage:
        >>> from haystack import Document
        >>> docs = [Document(id="h", content="Hamlet is a tragedy by William Shakespeare.", meta={"title": "Hamlet"}),
        ...         Document(id="long", content="word " * 1000, meta={"title": "Too long"})]
        >>> packer = ContextPacker(model="smollm2-135m-instruct", context_length=384)
        >>> out = packer.run(query="Who wrote Hamlet?", documents=docs)
        >>> [d.id for d in out["documents"]], out["dropped_ids"]
        (['h'], ['long'])
    """

    def __init__(self, model: str, template: str = "qa-completion", context_length: int = 384,
                 max_new_tokens: int = 16, soft_prompt: str | None = None, max_passages: int | None = None,
                 order: str = "best-first", index_dir: str | None = None, ensemble: bool = False):
        """
        :param model: The reader's backbone (its tokenizer measures the budget).
        :param template: The reader's prompt template (see :mod:`odqa.lm.prompting`).
        :param context_length: The reader's context window, in tokens.
        :param max_new_tokens: Room kept for the answer.
        :param soft_prompt: The reader's soft prompt artifact, whose vectors also take context.
        :param max_passages: Keep at most this many passages (``None``: as many as fit).
        :param order: How the kept passages reach the reader: ``best-first``, or ``best-last``
            (the best passage nearest the question, which the prompt puts after the passages).
        :param index_dir: The index the passages come from: every passage's tokens are counted once,
            at warm-up, so packing is lookups only (without it each passage is counted the first
            time it is seen).
        :param ensemble: The reader reads each passage apart (``FrozenLMReader(ensemble=True)``), so
            the budget holds for each passage alone: the first ``max_passages`` that fit alone are kept.
        """
        get_template(template)  # fail early on an unknown name
        if order not in ORDERS:
            raise PipelineConfigError(f"unknown passage order '{order}'; use one of {list(ORDERS)}")
        if max_passages is not None and max_passages < 1:
            raise PipelineConfigError(
                f"max_passages must be at least 1 (or null for as many as fit), got {max_passages}")
        self.max_passages = max_passages
        self.order = order
        self.model = model
        self.template = template
        self.context_length = context_length
        self.max_new_tokens = max_new_tokens
        self.soft_prompt = soft_prompt
        self.index_dir = index_dir
        self.ensemble = ensemble
        if ensemble and max_passages is None:
            raise PipelineConfigError("an ensemble packer needs max_passages: each kept passage is one more reading "
                                      "of the question")
        self._tokenizer = None
        self._prompt: ReaderPrompt | None = None
        # formatted passage -> its tokens: each passage is tokenised once per process, for every
        # packer of the same tokenizer (a server's pipelines, a trainer's retrieval pipelines)
        self._costs: dict[str, int] = {}

    def warm_up(self) -> None:
        if self._tokenizer is None:
            from odqa.lm.backbone import load_tokenizer

            self._prompt = ReaderPrompt(self.template, self.context_length, self.max_new_tokens,
                                        soft_prompt_length(self.soft_prompt))
            self._tokenizer = load_tokenizer(self.model)  # the tokenizer only: the reader loads the weights
            self._costs = _COSTS.setdefault(self.model, {})
            if self.index_dir:
                from odqa.index import open_index

                index = open_index(self.index_dir)
                if index.manifest["count"] <= MAX_CACHED_COSTS:  # a 21M-passage index is counted as it is read
                    self._passage_costs(index.passages)

    @component.output_types(documents=list[Document], dropped_ids=list[str], budget=dict)
    def run(self, query: str, documents: list[Document]) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Passages, best first.
        :returns: ``documents`` that fit (in rank order, or reversed for ``best-last``),
            ``dropped_ids`` of those cut, and ``budget``: the token arithmetic.
        """
        query = check_question(query)
        self.warm_up()
        tok, prompt = self._tokenizer, self._prompt
        available = prompt.budget(tok, query)
        costs = self._passage_costs(documents)
        if self.ensemble:
            chosen, prompt_tokens = self._choose_apart(query, documents, costs, available)
        else:
            chosen, used = [], 0
            for i, cost in enumerate(costs):
                if self.max_passages is not None and len(chosen) == self.max_passages:
                    break
                if used + cost <= available:
                    chosen.append(i)
                    used += cost
            # exact check on the rendered prompt (token merges at passage joins can shift a count by one)
            while chosen:
                passages = [(documents[i].meta.get("title", ""), documents[i].content) for i in chosen]
                prompt_tokens = prompt.length(tok, query, passages)
                if prompt_tokens <= prompt.limit:
                    break
                chosen.pop()
            else:
                prompt_tokens = prompt.length(tok, query, [])
        kept = set(chosen)
        return {
            "documents": [documents[i] for i in (chosen[::-1] if self.order == "best-last" else chosen)],
            "dropped_ids": [d.id for i, d in enumerate(documents) if i not in kept],
            "budget": {
                "context_length": self.context_length,
                "max_new_tokens": self.max_new_tokens,
                "soft_prompt_tokens": prompt.soft_prompt_tokens,
                "passage_budget": available,
                "prompt_tokens": prompt_tokens,
            },
        }

    def _choose_apart(self, query: str, documents: list[Document], costs: list[int],
                      available: int) -> tuple[list[int], int]:
        """For an ensemble reader: the first ``max_passages`` passages that fit the window alone, each
        checked exactly on its own rendered prompt, and the longest of those readings' prompt tokens."""
        tok, prompt = self._tokenizer, self._prompt
        chosen, lengths = [], []
        for i, cost in enumerate(costs):
            if len(chosen) == self.max_passages:
                break
            if cost <= available:
                n = prompt.length(tok, query, [(documents[i].meta.get("title", ""), documents[i].content)])
                if n <= prompt.limit:
                    chosen.append(i)
                    lengths.append(n)
        return chosen, max(lengths) if lengths else prompt.length(tok, query, [])

    def _passage_costs(self, documents: list) -> list[int]:
        """Each passage's tokens in the prompt, counted once per passage text (then looked up): the
        retrievers return the same passages again and again, and tokenising 100 of them per
        question was most of the packer's time. ``documents``: haystack Documents, or the index's
        passages."""
        texts = [format_passages([(d.meta.get("title", ""), d.content) if isinstance(d, Document) else
                                  (d.title, d.text)]) + "\n" for d in documents]
        missing = list(dict.fromkeys(t for t in texts if t not in self._costs))
        if missing:
            if len(self._costs) + len(missing) > MAX_CACHED_COSTS:
                self._costs.clear()
            counted = self._tokenizer(missing, add_special_tokens=False)["input_ids"]  # one batched call
            self._costs.update((t, len(ids)) for t, ids in zip(missing, counted))
        return [self._costs[t] for t in texts]

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, model=self.model, template=self.template, context_length=self.context_length,
            max_new_tokens=self.max_new_tokens, soft_prompt=self.soft_prompt, max_passages=self.max_passages,
            order=self.order, index_dir=self.index_dir, ensemble=self.ensemble,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContextPacker":
        return default_from_dict(cls, data)
