"""Recursive closed-book QA: two passes through the same frozen LM (paper, Section 4).

A closed-book reader answers from the question alone: :class:`~odqa.components.readers.FrozenLMReader`
with the bare ``qa`` template and no documents reads ``"Question: ...\\nAnswer:"`` after its
soft prompt; that is the one-pass baseline (``pipelines/closed_book.yml``). Two ways to spend a
second pass of the same frozen LM on a question:

- :class:`TextualRecursionReader`: pass 1 (the one-pass reader's soft prompt) *samples* n
  candidate answers; pass 2 reads the question and the deduplicated candidates, rendered as
  ``Candidate: ...`` lines by the same ``qa`` template, after its own soft prompt, and writes
  the answer greedily.
- :class:`NeuralRecursionReader`: pass 1 answers greedily and its final hidden states go
  through a small trained :class:`~odqa.lm.connector.Connector` into pass 2's input embeddings:
  ``[soft prompt 2 ; connector(h1) ; question]``. LM -> Connector -> LM.

Which pass-1 positions the connector reads: the question's and the pass-1 answer's (greedy,
stop token excluded), not the soft prompt's. The soft prompt's states are the same for every
question (causal attention), so they carry nothing about it; the answer's states carry what
pass 1 concluded, the neural counterpart of textual recursion's candidates.

Both readers return answers as :class:`FrozenLMReader` does (one :class:`GeneratedAnswer`,
``meta["score"]``), plus per-pass token counts for the FLOPs estimate: ``tokens_processed``
(positions run through the transformer, both passes) and ``logit_positions`` (positions whose
next-token distribution was computed by the LM head).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from haystack import Document, component, default_from_dict, default_to_dict
from haystack.dataclasses import GeneratedAnswer

from odqa.components._common import check_question
from odqa.errors import ArtifactMismatchError, PipelineConfigError, QuestionTooLongError
from odqa.lm.backbone import freeze
from odqa.lm.connector import Connector, embed_ids, first_pass_states, second_pass_inputs
from odqa.lm.generation import cached_prefix, decode_answer, greedy_generate, strip_stops
from odqa.lm.prompting import clean_answer, encode_parts, get_template
from odqa.metrics import normalize_answer
from odqa.runs import file_sha256

TEMPLATE = "qa"  # the bare template: closed-book "Question: ...\nAnswer:", soft prompts replace instructions
CANDIDATE_TITLE = "Candidate"


# --- the two passes, shared by the readers and the trainer ----------------------------------------
def closed_book_parts(tok, question: str, candidates: list[str] | None = None) -> tuple[list[int], list[int]]:
    """``(prefix_ids, body_ids)`` of the closed-book input, with ``Candidate:`` lines when given."""
    passages = [(CANDIDATE_TITLE, c) for c in candidates or []]
    return encode_parts(tok, get_template(TEMPLATE), question, passages)


def dedup_candidates(texts: list[str]) -> list[str]:
    """Cleaned candidates, first of each normalized text kept, empty ones dropped, order kept."""
    seen, out = set(), []
    for text in texts:
        answer = clean_answer(text)
        key = normalize_answer(answer)
        if key and key not in seen:
            seen.add(key)
            out.append(answer)
    return out


def _decode(backbone, new: list[int], logp: list[float]) -> tuple[str, float]:
    return decode_answer(backbone.tokenizer, new, logp, backbone.stop_token_ids)


def _check_length(n: int, limit: int, question: str) -> None:
    if n > limit:
        raise QuestionTooLongError(f"the question '{question[:60]}' needs {n} input positions, over the "
                                   f"limit of {limit}; shorten it or raise context_length")


# --- the components ---------------------------------------------------------------------------------
class _TwoPassReader:
    """Shared loading: the backbone and the pass-1 soft prompt (the one-pass reader's)."""

    model: str
    first_prompt: str
    dtype: str

    def _load_common(self):
        from odqa.lm.backbone import load_backbone

        backbone = load_backbone(self.model, self.dtype)
        soft1 = backbone.soft_prompt(self.first_prompt)
        return backbone, soft1

    def _answer(self, query: str, text: str, score: float, meta: dict) -> dict[str, Any]:
        answer = GeneratedAnswer(data=clean_answer(text), query=query, documents=[],
                                 meta={"score": score, "raw": text, **meta})
        return {"answers": [answer]}


@component
class TextualRecursionReader(_TwoPassReader):
    """Closed-book QA in two textual passes: sample candidates, then read them and answer.

    Pass 1 runs the frozen LM with the one-pass soft prompt and samples ``num_candidates``
    answers (temperature and nucleus sampling, seeded per question so a rerun gives the same
    candidates); they are cleaned and deduplicated by normalized text. Pass 2 reads
    ``[soft prompt 2 ; "Candidate: c1\\n...\\nQuestion: q\\nAnswer:"]`` and decodes greedily.

    Usage:
        >>> reader = TextualRecursionReader(first_prompt="artifacts/closed-book-prompt-smollm2",
        ...                                 second_prompt="artifacts/recursive-textual-smollm2")
        >>> reader.run(query="Who wrote Hamlet?")["answers"][0].meta["candidates"]
    """

    def __init__(self, first_prompt: str, second_prompt: str, model: str = "smollm2-135m-instruct",
                 num_candidates: int = 4, temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
                 max_new_tokens: int = 16, context_length: int = 256, dtype: str = "float32"):
        """
        :param first_prompt: Pass 1's soft prompt artifact (the one-pass closed-book reader's).
        :param second_prompt: Pass 2's soft prompt artifact, trained on pass 1's samples.
        :param model: Backbone: a bundled name, local path or HF id.
        :param num_candidates: Candidates sampled in pass 1 (before deduplication).
        :param temperature: Sampling temperature of pass 1, above 0.
        :param top_p: Nucleus sampling mass of pass 1, in (0, 1].
        :param seed: Sampling seed; each question's seed is derived from it and the question text.
        :param max_new_tokens: Longest answer (and candidate), in tokens.
        :param context_length: Longest input of either pass (soft prompt included), plus the answer.
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        """
        check_sampling(num_candidates, temperature, top_p)
        self.first_prompt = first_prompt
        self.second_prompt = second_prompt
        self.model = model
        self.num_candidates = num_candidates
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        self.dtype = dtype
        self._backbone = None

    def warm_up(self) -> None:
        if self._backbone is not None:
            return
        backbone, soft1 = self._load_common()
        soft2 = backbone.soft_prompt(self.second_prompt)
        self._soft1, self._soft2 = soft1, soft2
        self._prefix_key = (self.model, self.dtype, "textual-pass2", self.second_prompt, soft2.digest())
        self._backbone = backbone

    @component.output_types(answers=list[GeneratedAnswer])
    def run(self, query: str, documents: list[Document] | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Ignored (closed-book); accepted so the reader fits where others do.
        :returns: ``answers``: one :class:`GeneratedAnswer`; ``meta`` holds ``score``, ``candidates``,
            ``pass1_seconds``, ``pass2_seconds``, ``tokens_processed`` and ``logit_positions``.
        """
        query = check_question(query)
        self.warm_up()
        t0 = time.perf_counter()
        candidates, sampled = self.sample_candidates(query)
        t1 = time.perf_counter()
        text, score, n_in, n_new = self.second_pass(query, candidates)
        t2 = time.perf_counter()
        return self._answer(query, text, score, {
            "candidates": candidates, "pass1_seconds": round(t1 - t0, 4), "pass2_seconds": round(t2 - t1, 4),
            "prompt_tokens": n_in, "new_tokens": n_new,
            "tokens_processed": sampled["tokens_processed"] + n_in + n_new - 1,
            "logit_positions": sampled["logit_positions"] + n_new,
        })

    def sample_candidates(self, query: str) -> tuple[list[str], dict]:
        """Pass 1: ``num_candidates`` samples, deduplicated; and the token counts it cost."""
        self.warm_up()
        return sample_candidates(self._backbone, self._soft1, query, self.num_candidates, self.temperature,
                                 self.top_p, self.seed, self.max_new_tokens, self.context_length)

    def second_pass(self, query: str, candidates: list[str]) -> tuple[str, float, int, int]:
        """Pass 2 on given candidates: ``(text, score, input positions, new tokens)``."""
        self.warm_up()
        backbone = self._backbone
        model = backbone.model
        prefix_ids, body_ids = closed_book_parts(backbone.tokenizer, query, candidates)
        n_in = self._soft2.length + len(prefix_ids) + len(body_ids)
        _check_length(n_in + self.max_new_tokens, self.context_length, query)
        prefix = cached_prefix(self._prefix_key, model, self._soft2, prefix_ids)
        inputs = torch.tensor([body_ids if prefix is not None else prefix_ids + body_ids], device=backbone.device)
        new, logp = greedy_generate(model, prefix, inputs, self.max_new_tokens, backbone.stop_token_ids)
        text, score = _decode(backbone, new, logp)
        return text, score, n_in, len(new)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, first_prompt=self.first_prompt, second_prompt=self.second_prompt, model=self.model,
            num_candidates=self.num_candidates, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            max_new_tokens=self.max_new_tokens, context_length=self.context_length, dtype=self.dtype,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextualRecursionReader":
        return default_from_dict(cls, data)


@torch.inference_mode()
def sample_candidates(backbone, soft1, query: str, num_candidates: int, temperature: float, top_p: float,
                      seed: int, max_new_tokens: int, context_length: int) -> tuple[list[str], dict]:
    """Textual recursion's pass 1: sample answers after ``soft1``, seeded per question; deduplicate.

    Returns the candidates and ``{"tokens_processed", "logit_positions"}``, the positions it cost.
    """
    check_sampling(num_candidates, temperature, top_p)
    model, tok = backbone.model, backbone.tokenizer
    prefix, body = closed_book_parts(tok, query)
    ids = prefix + body
    _check_length(len(ids) + soft1.length + max_new_tokens, context_length, query)
    embeds = soft1(embed_ids(model, ids).unsqueeze(0))
    question_seed = (seed * 1_000_003 + int(hashlib.sha1(query.encode("utf-8")).hexdigest()[:8], 16)) % 2**31
    device = embeds.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(question_seed)  # seeds the GPU too: a GPU draws other samples than the CPU
        out = model.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=device),
            do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
            num_return_sequences=num_candidates, max_new_tokens=max_new_tokens,
            eos_token_id=backbone.stop_token_ids, pad_token_id=tok.pad_token_id)
    answers = [strip_stops(seq.tolist(), backbone.stop_token_ids, tok.pad_token_id) for seq in out]
    texts = [tok.decode(a, skip_special_tokens=True) for a in answers]
    generated = [min(len(a) + 1, out.shape[1]) for a in answers]  # up to and including the stop token
    n_in = int(embeds.shape[1])
    # every sequence reads the input, then is fed back each generated token but its last
    cost = {"tokens_processed": num_candidates * n_in + sum(generated) - len(generated),
            "logit_positions": sum(generated)}
    return dedup_candidates(texts), cost


@torch.inference_mode()
def greedy_from_embeds(backbone, embeds: torch.Tensor, max_new_tokens: int) -> tuple[str, float, int]:
    """Greedy answer after ``[1, n, d]`` input embeddings, no cache: ``(text, score, new tokens)``."""
    new, logp = greedy_generate(backbone.model, None, embeds, max_new_tokens, backbone.stop_token_ids)
    text, score = _decode(backbone, new, logp)
    return text, score, len(new)


def check_sampling(num_candidates: int, temperature: float, top_p: float) -> None:
    """Refuse sampling settings that cannot work, naming the valid range."""
    if not isinstance(num_candidates, int) or num_candidates < 1:
        raise PipelineConfigError(f"num_candidates must be an integer of at least 1, got {num_candidates!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise PipelineConfigError(f"temperature must be above 0 (sampling), got {temperature!r}; for one greedy "
                                  "answer use the one-pass closed-book reader")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise PipelineConfigError(f"top_p must be in (0, 1], got {top_p!r}")


@component
class NeuralRecursionReader(_TwoPassReader):
    """Closed-book QA in two passes joined by vectors: LM -> Connector -> LM.

    Pass 1 runs the frozen LM with the one-pass soft prompt and answers greedily; its final
    hidden states at the question's and the answer's positions go through the :class:`Connector`.
    Pass 2 reads ``[soft prompt 2 ; prefix ; connector(h1) ; "Question: q\\nAnswer:"]`` and
    decodes greedily. The recursion artifact holds the connector and soft prompt 2, and its
    manifest names the pass-1 prompt it was trained with.

    Usage:
        >>> reader = NeuralRecursionReader(first_prompt="artifacts/closed-book-prompt-smollm2",
        ...                                recursion="artifacts/recursive-neural-smollm2")
        >>> reader.run(query="Who wrote Hamlet?")["answers"][0].data
    """

    def __init__(self, first_prompt: str, recursion: str, model: str = "smollm2-135m-instruct",
                 max_new_tokens: int = 16, context_length: int = 256, dtype: str = "float32"):
        """
        :param first_prompt: Pass 1's soft prompt artifact (the one-pass closed-book reader's).
        :param recursion: Artifact dir with ``connector.safetensors`` and ``soft_prompt.safetensors`` (pass 2).
        :param model: Backbone: a bundled name, local path or HF id.
        :param max_new_tokens: Longest answer of either pass, in tokens.
        :param context_length: Longest input of either pass (soft prompt included), plus the answer.
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        """
        self.first_prompt = first_prompt
        self.recursion = recursion
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        self.dtype = dtype
        self._backbone = None

    def warm_up(self) -> None:
        if self._backbone is not None:
            return
        backbone, soft1 = self._load_common()
        soft2 = backbone.soft_prompt(self.recursion)
        connector = freeze(Connector.load(self.recursion, self.model, backbone.hidden_size).to(backbone.device))
        self._check_first_prompt()
        self._soft1, self._soft2, self._connector = soft1, soft2, connector
        self._prefix_keys = ((self.model, self.dtype, "pass1", self.first_prompt, soft1.digest()),
                             (self.model, self.dtype, "neural-pass2", self.recursion, soft2.digest()))
        self._backbone = backbone

    def _check_first_prompt(self) -> None:
        """The connector learned from one pass-1 prompt's states; warn loudly if another is given."""
        from odqa.lm.soft_prompt import weights_path

        manifest_path = Path(self.recursion) / "manifest.json"
        trained = json.loads(manifest_path.read_text()).get("first_prompt_sha256") if manifest_path.exists() else None
        if trained:
            given = file_sha256(weights_path(self.first_prompt))
            if given != trained:
                raise ArtifactMismatchError(
                    f"recursion artifact '{self.recursion}' was trained on the states of another pass-1 prompt "
                    f"than '{self.first_prompt}'; set first_prompt to the one its manifest names")

    @component.output_types(answers=list[GeneratedAnswer])
    def run(self, query: str, documents: list[Document] | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Ignored (closed-book); accepted so the reader fits where others do.
        :returns: ``answers``: one :class:`GeneratedAnswer`; ``meta`` holds ``score``, ``first_answer``,
            ``pass1_seconds``, ``pass2_seconds``, ``tokens_processed`` and ``logit_positions``.
        """
        query = check_question(query)
        self.warm_up()
        t0 = time.perf_counter()
        first, states, cost = self.first_pass(query)
        t1 = time.perf_counter()
        text, score, n_in, n_new = self.second_pass(query, states)
        t2 = time.perf_counter()
        return self._answer(query, text, score, {
            "first_answer": first, "pass1_seconds": round(t1 - t0, 4), "pass2_seconds": round(t2 - t1, 4),
            "prompt_tokens": n_in, "new_tokens": n_new, "connector_positions": int(states.shape[0]),
            "tokens_processed": cost["tokens_processed"] + n_in + n_new - 1,
            "logit_positions": cost["logit_positions"] + n_new,
        })

    def first_pass(self, query: str) -> tuple[str, torch.Tensor, dict]:
        """Pass 1: the greedy answer, the states the connector reads, and the token counts it cost."""
        self.warm_up()
        backbone = self._backbone
        model, tok = backbone.model, backbone.tokenizer
        prefix_ids, body_ids = closed_book_parts(tok, query)
        _check_length(self._soft1.length + len(prefix_ids) + len(body_ids) + self.max_new_tokens,
                      self.context_length, query)
        prefix = cached_prefix(self._prefix_keys[0], model, self._soft1, prefix_ids)
        inputs = torch.tensor([body_ids if prefix is not None else prefix_ids + body_ids], device=backbone.device)
        new, _ = greedy_generate(model, prefix, inputs, self.max_new_tokens, backbone.stop_token_ids)
        answer_ids = strip_stops(new, backbone.stop_token_ids, tok.pad_token_id)
        states = first_pass_states(model, self._soft1, prefix_ids, body_ids, answer_ids)
        n_in = self._soft1.length + len(prefix_ids) + len(body_ids)
        # greedy: input + fed-back tokens; then one forward over the whole pass-1 sequence for the states
        cost = {"tokens_processed": n_in + len(new) - 1 + n_in + len(answer_ids), "logit_positions": len(new)}
        return tok.decode(answer_ids, skip_special_tokens=True), states, cost

    def second_pass(self, query: str, states: torch.Tensor) -> tuple[str, float, int, int]:
        """Pass 2 from pass-1 states: ``(text, score, input positions, new tokens)``."""
        self.warm_up()
        backbone = self._backbone
        model = backbone.model
        prefix_ids, body_ids = closed_book_parts(backbone.tokenizer, query)
        _check_length(self._soft2.length + len(prefix_ids) + int(states.shape[0]) + len(body_ids)
                      + self.max_new_tokens, self.context_length, query)
        with torch.inference_mode():
            tail = second_pass_inputs(model, self._connector, states, body_ids).unsqueeze(0)
            prefix = cached_prefix(self._prefix_keys[1], model, self._soft2, prefix_ids)
            if prefix is None:
                tail = torch.cat([embed_ids(model, prefix_ids).unsqueeze(0), tail], dim=1)
            new, logp = greedy_generate(model, prefix, tail, self.max_new_tokens, backbone.stop_token_ids)
        text, score = _decode(backbone, new, logp)
        n_in = self._soft2.length + len(prefix_ids) + int(tail.shape[1])
        return text, score, n_in, len(new)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, first_prompt=self.first_prompt, recursion=self.recursion, model=self.model,
            max_new_tokens=self.max_new_tokens, context_length=self.context_length, dtype=self.dtype,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NeuralRecursionReader":
        return default_from_dict(cls, data)
