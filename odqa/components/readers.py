"""FrozenLMReader: a frozen causal LM, optionally prompt-tuned, answers from the packed passages."""

from __future__ import annotations

import logging
from typing import Any

import torch
from haystack import Document, component, default_from_dict, default_to_dict
from haystack.dataclasses import GeneratedAnswer

from odqa.components._common import check_question
from odqa.errors import PipelineConfigError
from odqa.lm.generation import cached_prefix, decode_answer, greedy_generate
from odqa.lm.prompting import ReaderPrompt, clean_answer, encode_prefix, get_template

logger = logging.getLogger(__name__)


# Rows per forward pass in run_batch. A 228-token prefill of Gemma-3-270m on 2 cores (AVX-512) cost
# 1.95 ms a token at 1 row, 1.39-1.44 at 6-8 rows and 1.73 at 24 (eval/RESULTS.md, session 14).
MAX_ROWS = 8


def _chunks(lengths: list[float], rows: list[int], max_rows: int) -> list[list[int]]:
    """Questions (indices) in groups of at most ``max_rows`` rows, similar lengths together (less
    padding). A question is never split; one with more rows than ``max_rows`` is a group alone.
    Answers do not depend on their batch, so grouping changes only the time."""
    groups: list[list[int]] = []
    used = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if not groups or used + rows[i] > max_rows:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += rows[i]
    return groups


@component
class FrozenLMReader:
    """Reads the question and passages with a frozen LM and writes a short answer.

    The backbone is loaded once per process and shared (``requires_grad=False``,
    eval mode). An optional soft prompt (Lester et al., 2021) is prepended to the
    input embeddings. Decoding is greedy (``num_beams=1``) or beam search. The
    reader never truncates: a prompt over ``context_length`` is an error, so put a
    :class:`~odqa.components.packing.ContextPacker` with the same settings before it.

    With ``prefix_cache`` on (the default), greedy decoding computes the keys and values
    of the input's fixed head -- the soft prompt and the template's prefix -- once per
    process and reuses them for every question (:mod:`odqa.lm.generation`); answers are
    the same as without it. Beam search always runs ``generate`` on the whole input.

    Usage:
        >>> from haystack import Document
        >>> packed = [Document(content="Hamlet is a tragedy by William Shakespeare.", meta={"title": "Hamlet"})]
        >>> reader = FrozenLMReader(model="smollm2-135m-instruct")
        >>> reader.run(query="Who wrote Hamlet?", documents=packed)["answers"][0].data
        'William Shakespeare'
    """

    def __init__(self, model: str = "smollm2-135m-instruct", template: str = "qa-completion",
                 soft_prompt: str | None = None, context_length: int = 384, max_new_tokens: int = 16,
                 num_beams: int = 1, dtype: str = "float32", prefix_cache: bool = True,
                 quantize: str | None = None, ensemble: bool = False, ensemble_temperature: float | None = None):
        """
        :param model: Backbone: a bundled name, local path or HF id.
        :param template: Prompt template (see :mod:`odqa.lm.prompting`).
        :param soft_prompt: Soft prompt artifact (dir with ``soft_prompt.safetensors``), or ``None``.
        :param context_length: Context window used, in tokens (prompt + soft prompt + answer).
        :param max_new_tokens: Longest answer, in tokens.
        :param num_beams: 1 for greedy decoding, more for beam search.
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        :param prefix_cache: Reuse the soft prompt's and the template prefix's keys and values
            across questions (greedy decoding only; beam search ignores it).
        :param quantize: ``int8`` runs the backbone's linear layers in int8 on the CPU
            (:mod:`odqa.lm.quantization`; the soft prompt, embeddings and output head stay
            float), ``auto`` for int8 where the CPU has VNNI (int8 dot products) and none
            elsewhere, or ``None`` for none. On a GPU it is ignored: the backbone runs in ``dtype``.
        :param ensemble: Read each passage apart and decode one answer from the mixture of the
            readings' next-token distributions (REPLUG, Shi et al., 2023; greedy, with the prefix
            cache), instead of reading the passages together in one prompt. The packer must say
            ``ensemble: true`` too, so that it budgets each passage alone.
        :param ensemble_temperature: The mixture's weights: ``None`` weighs every passage the same;
            a temperature ``T`` weighs them by ``softmax(score / T)`` of the passages' retrieval scores.
        """
        from odqa.lm.quantization import READER_QUANTIZE

        get_template(template)
        if quantize is not None and quantize not in READER_QUANTIZE:
            raise PipelineConfigError(f"unknown quantize '{quantize}' for the reader; use one of "
                                      f"{list(READER_QUANTIZE)} or null")
        if num_beams < 1:
            raise PipelineConfigError(f"num_beams must be at least 1, got {num_beams}")
        if ensemble and (num_beams != 1 or not prefix_cache):
            raise PipelineConfigError("ensemble: true decodes greedily from the prefix cache; set num_beams: 1 and "
                                      "prefix_cache: true, or ensemble: false")
        if ensemble_temperature is not None and not ensemble_temperature > 0:
            raise PipelineConfigError(f"ensemble_temperature must be positive (or null for equal weights), got "
                                      f"{ensemble_temperature}")
        self.model = model
        self.template = template
        self.soft_prompt = soft_prompt
        self.context_length = context_length
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.dtype = dtype
        self.prefix_cache = prefix_cache
        self.quantize = quantize
        self.ensemble = ensemble
        self.ensemble_temperature = ensemble_temperature
        self._backbone = None
        self._soft = None
        self._prompt: ReaderPrompt | None = None
        self._prefix_key: tuple | None = None

    def warm_up(self) -> None:
        if self._backbone is not None:
            return
        from odqa.lm.backbone import load_backbone, resolve_device
        from odqa.lm.quantization import resolve_quantize

        device = resolve_device()
        quantize = resolve_quantize(self.quantize, device)
        if self.quantize is not None and quantize is None:
            logger.info("the reader's quantize: %s runs as none here (%s)", self.quantize,
                        device if device.type != "cpu" else "a CPU without VNNI, where int8 is slower than float32")
        backbone = load_backbone(self.model, self.dtype, quantize=quantize)
        soft = None
        if self.soft_prompt:
            soft = backbone.soft_prompt(self.soft_prompt)
        self._soft = soft
        self._prompt = ReaderPrompt(self.template, self.context_length, self.max_new_tokens,
                                    soft.length if soft is not None else 0)
        if self._cached:
            digest = soft.digest() if soft else None
            self._prefix_key = (self.model, self.dtype, quantize, self.soft_prompt, digest, self.template)
            cached_prefix(self._prefix_key, backbone.model, soft,  # build it now, not on the first question
                          encode_prefix(backbone.tokenizer, get_template(self.template)))
        self._backbone = backbone

    @property
    def _cached(self) -> bool:
        return self.prefix_cache and self.num_beams == 1

    @component.output_types(answers=list[GeneratedAnswer])
    def run(self, query: str, documents: list[Document] | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Packed passages, best first.
        :returns: ``answers``: one :class:`GeneratedAnswer` whose ``meta`` holds ``score`` (the
            geometric-mean token probability), ``prompt_tokens`` (an ensemble's summed over its
            readings) and ``new_tokens``.
        """
        if self.ensemble:
            return self.run_batch([query], [documents or []])
        query, documents, prefix_ids, body_ids = self._encode(query, documents)
        if self._cached:
            text, score, n_new = self._generate_cached(prefix_ids, body_ids)
        else:
            text, score, n_new = self._generate(torch.tensor([prefix_ids + body_ids], device=self._backbone.device))
        return {"answers": [self._answer(query, documents, len(prefix_ids) + len(body_ids), text, score, n_new)]}

    def run_batch(self, queries: list[str], documents: list[list[Document]]) -> dict[str, Any]:
        """Answer several questions, each with its own packed passages, decoding them together
        (:func:`~odqa.lm.generation.greedy_generate_batch`, in groups of at most ``MAX_ROWS`` rows of
        similar length): the answers are those :meth:`run` gives one by one, token for token. Beam
        search, or a reader without the prefix cache, answers them one by one.

        :returns: ``answers``: one :class:`GeneratedAnswer` per question, in order.
        """
        if len(queries) != len(documents):
            raise PipelineConfigError(f"run_batch needs one list of documents per question, got {len(queries)} "
                                      f"questions and {len(documents)} lists")
        if not self._cached:
            return {"answers": [self.run(q, d)["answers"][0] for q, d in zip(queries, documents)]}
        from odqa.lm.generation import greedy_generate_batch

        if self.ensemble:  # one row per passage (none: the question alone), one answer per question
            rows, weights = [], []
            for q, docs in zip(queries, documents):
                parts = [self._encode(q, [d]) for d in docs] or [self._encode(q, [])]
                rows.append((parts[0][0], list(docs), parts[0][2], [body for *_, body in parts]))
                weights.append(self._weights(docs) if docs else [1.0])
        else:
            rows = [(q, d, head, [body]) for q, d, head, body in (self._encode(q, d) for q, d in zip(queries, documents))]
            weights = None
        model = self._backbone.model
        prefix = cached_prefix(self._prefix_key, model, self._soft, rows[0][2])
        bodies = [[body if prefix is not None else head + body for body in parts] for _, _, head, parts in rows]
        decoded: list = [None] * len(rows)
        for chunk in _chunks([sum(map(len, b)) / len(b) for b in bodies], [len(b) for b in bodies], MAX_ROWS):
            out = greedy_generate_batch(model, prefix, [x for i in chunk for x in bodies[i]], self.max_new_tokens,
                                        self._backbone.stop_token_ids, pad_id=self._backbone.tokenizer.pad_token_id or 0,
                                        weights=None if weights is None else [weights[i] for i in chunk])
            for i, result in zip(chunk, out):
                decoded[i] = result
        soft = self._prompt.soft_prompt_tokens  # _answer counts it once; an ensemble's every reading has it
        return {"answers": [self._answer(q, d, sum(len(head) + len(body) + soft for body in parts) - soft,
                                         *self._decode(new, torch.tensor(logp)))
                            for (q, d, head, parts), (new, logp) in zip(rows, decoded)]}

    def _weights(self, documents: list[Document]) -> list[float]:
        """The ensemble's weight per passage: equal, or ``softmax(score / ensemble_temperature)``."""
        if self.ensemble_temperature is None:
            return [1.0 / len(documents)] * len(documents)
        scores = [d.score for d in documents]
        if any(x is None for x in scores):
            raise PipelineConfigError("ensemble_temperature weighs passages by their retrieval scores, but some "
                                      "passages have none; use ensemble_temperature: null for equal weights")
        return torch.softmax(torch.tensor(scores, dtype=torch.float64) / self.ensemble_temperature, 0).tolist()

    def _encode(self, query: str, documents: list[Document] | None):
        """``(question, documents, prefix ids, body ids)``: the checked question and the reader's input."""
        query = check_question(query)
        documents = documents or []
        self.warm_up()
        tok, prompt = self._backbone.tokenizer, self._prompt
        passages = [(d.meta.get("title", ""), d.content) for d in documents]
        prefix_ids, body_ids = prompt.encode(tok, query, passages)
        n = len(prefix_ids) + len(body_ids)  # the reader's input, counted the same way by the packer
        if n > prompt.limit:
            prompt.budget(tok, query)  # only now worth rendering the bare prompt: raises if the question alone is too long
            raise PipelineConfigError(
                f"the reader's prompt is {n} tokens, over its limit of {prompt.limit}; put a ContextPacker "
                "with the same model, template, context_length and max_new_tokens before the reader"
            )
        return query, documents, prefix_ids, body_ids

    def _answer(self, query: str, documents: list[Document], n_ids: int, text: str, score: float,
                n_new: int) -> GeneratedAnswer:
        return GeneratedAnswer(
            data=clean_answer(text), query=query, documents=documents,
            meta={"score": score, "raw": text, "prompt_tokens": n_ids + self._prompt.soft_prompt_tokens,
                  "new_tokens": n_new},
        )

    def _generate_cached(self, prefix_ids: list[int], body_ids: list[int]) -> tuple[str, float, int]:
        model = self._backbone.model
        prefix = cached_prefix(self._prefix_key, model, self._soft, prefix_ids)  # a lookup after warm_up
        inputs = torch.tensor([body_ids if prefix is not None else prefix_ids + body_ids], device=self._backbone.device)
        new, logp = greedy_generate(model, prefix, inputs, self.max_new_tokens, self._backbone.stop_token_ids)
        return self._decode(new, torch.tensor(logp))

    @torch.inference_mode()
    def _generate(self, input_ids: torch.Tensor) -> tuple[str, float, int]:
        backbone = self._backbone
        model, tok = backbone.model, backbone.tokenizer
        kwargs = dict(
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False,
            eos_token_id=backbone.stop_token_ids, pad_token_id=tok.pad_token_id,
            output_scores=True, return_dict_in_generate=True,
        )
        if self._soft is not None:
            embeds = self._soft(model.get_input_embeddings()(input_ids))
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
            new = out.sequences[0]  # with inputs_embeds only the new tokens come back
        else:
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            new = out.sequences[0, input_ids.shape[1]:]
        beam_indices = getattr(out, "beam_indices", None)
        logp = model.compute_transition_scores(out.sequences, out.scores, beam_indices, normalize_logits=True)[0]
        logp = logp[torch.isfinite(logp)][: len(new)].cpu()
        return self._decode([int(t) for t in new], logp)

    def _decode(self, new: list[int], logp: torch.Tensor) -> tuple[str, float, int]:
        """Answer text, geometric-mean token probability (:func:`~odqa.lm.generation.decode_answer`), token count."""
        text, score = decode_answer(self._backbone.tokenizer, new, logp, self._backbone.stop_token_ids)
        return text, score, len(new)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, model=self.model, template=self.template, soft_prompt=self.soft_prompt,
            context_length=self.context_length, max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams, dtype=self.dtype, prefix_cache=self.prefix_cache, quantize=self.quantize,
            ensemble=self.ensemble, ensemble_temperature=self.ensemble_temperature,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrozenLMReader":
        return default_from_dict(cls, data)
