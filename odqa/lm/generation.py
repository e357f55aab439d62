"""Greedy decoding from the frozen LM, with the prompt's fixed head computed once per process.

Every question's input starts with the same vectors: the soft prompt (Lester et al., 2021)
and the template's prefix (BOS, instruction, worked examples; see :mod:`odqa.lm.prompting`).
The backbone is frozen, so their keys and values never change: :class:`PrefixCache` runs
the LM over ``[soft prompt ; embed(prefix_ids)]`` once and keeps the ``past_key_values``,
and :func:`greedy_generate` starts each question from a private copy of them, so only the
question's body and its answer tokens go through the LM.

Usage:
    >>> prefix = cached_prefix(key, model, soft_prompt, prefix_ids)   # once per process
    >>> new_ids, logprobs = greedy_generate(model, prefix, torch.tensor([body_ids]), 16, stop_ids)
    >>> [(new_ids, logprobs), ...] = greedy_generate_batch(model, prefix, [body_ids, ...], 16, stop_ids)
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import torch

from odqa.errors import PipelineConfigError
from odqa.lm.screened_head import screened_head

MAX_CACHED_PREFIXES = 8  # one per (model, dtype, soft prompt, template) in use; a few MB each


@dataclass
class PrefixCache:
    """The frozen LM's keys and values for ``[soft prompt ; prefix_ids]``, shared by every question.

    Never decode into ``past_key_values`` directly: :meth:`fresh` gives a private copy.
    """

    past_key_values: object  # a transformers Cache (DynamicCache)
    length: int  # positions it covers: soft prompt vectors + prefix ids
    prefix_ids: tuple[int, ...]
    soft_prompt_length: int

    builds: ClassVar[int] = 0  # how many were built in this process (the reader builds one per setting)

    @classmethod
    @torch.inference_mode()
    def build(cls, model, soft_prompt, prefix_ids: list[int]) -> "PrefixCache":
        """Run ``model`` once over the soft prompt (a :class:`SoftPrompt` or ``None``) and ``prefix_ids``."""
        embedding = model.get_input_embeddings()
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=embedding.weight.device)
        embeds = embedding(ids)
        if soft_prompt is not None:
            embeds = soft_prompt(embeds)
        length = int(embeds.shape[1])
        if length == 0:
            raise PipelineConfigError("a prefix cache needs a soft prompt or prefix ids; both are empty")
        # the body alone (no output head): the keys and values are all a prefix needs, and a head
        # over the whole vocabulary would read (and, memory-mapped, make resident) Gemma's 671 MB table
        out = model.base_model(inputs_embeds=embeds,
                               attention_mask=torch.ones(1, length, dtype=torch.long, device=ids.device), use_cache=True)
        cls.builds += 1
        return cls(out.past_key_values, length, tuple(prefix_ids),
                   soft_prompt.length if soft_prompt is not None else 0)

    def fresh(self):
        """A private copy to decode into. deepcopy keeps any cache layer's state exact (sliding
        windows included). For SmolLM2's 30 layers and the 177-token qa-completion prefix (8 MB) it
        took 6-8 ms on 2 busy cores, against 3-4 ms for copying the bare tensors into a new cache,
        and about 1 s for the reader's whole answer."""
        return copy.deepcopy(self.past_key_values)


_CACHES: "OrderedDict[tuple, PrefixCache]" = OrderedDict()
_LOCK = threading.Lock()


def cached_prefix(key: tuple, model, soft_prompt, prefix_ids: list[int]) -> PrefixCache | None:
    """The process-wide :class:`PrefixCache` for ``key``, built on first use (LRU, a few kept).

    ``key`` must name everything the cache depends on besides ``prefix_ids`` (the reader uses
    model, dtype, soft prompt path and content digest, template). Returns ``None`` when there is
    nothing to cache (no soft prompt and no prefix ids).
    """
    if soft_prompt is None and not prefix_ids:
        return None
    key = (*key, tuple(prefix_ids))
    with _LOCK:
        if key in _CACHES:
            _CACHES.move_to_end(key)
            return _CACHES[key]
        prefix = PrefixCache.build(model, soft_prompt, prefix_ids)
        _CACHES[key] = prefix
        while len(_CACHES) > MAX_CACHED_PREFIXES:
            _CACHES.popitem(last=False)
        return prefix


@torch.inference_mode()
def greedy_generate(model, prefix: PrefixCache | None, inputs: torch.Tensor, max_new_tokens: int,
                    stop_ids: list[int], screen: bool = True) -> tuple[list[int], list[float]]:
    """Greedy decoding after ``prefix``: forward, argmax, append, stop at any of ``stop_ids``.

    :param model: A causal LM (frozen).
    :param prefix: Keys and values of the input's fixed head, or ``None`` to start from nothing.
    :param inputs: The rest of the input, ``[1, n]`` token ids or ``[1, n, d]`` input embeddings.
    :param max_new_tokens: Most tokens to generate.
    :param stop_ids: Tokens that end the answer; the stop token is returned too, as ``generate`` does.
    :param screen: Score the vocabulary through :func:`~odqa.lm.screened_head.screened_head` where it
        applies (the same tokens, a cheaper head); ``False`` runs the model's own head.
    :returns: ``(new_token_ids, token_logprobs)``: each new token's log-probability under the
        (unprocessed) next-token distribution, i.e. what ``compute_transition_scores`` reports.
    """
    if inputs.shape[0] != 1 or inputs.shape[1] == 0:
        raise PipelineConfigError(f"greedy_generate takes one non-empty sequence, got shape {tuple(inputs.shape)}")
    cache = prefix.fresh() if prefix is not None else None
    seen = prefix.length if prefix is not None else 0
    stops, device = set(stop_ids), inputs.device
    step = {"inputs_embeds" if inputs.is_floating_point() else "input_ids": inputs}
    new: list[int] = []
    logprobs: list[float] = []
    head = screened_head(model) if screen else None
    for _ in range(max_new_tokens):
        n = next(iter(step.values())).shape[1]
        cache, logits = _step(model, head, **step, past_key_values=cache,
                              attention_mask=torch.ones(1, seen + n, dtype=torch.long, device=device),
                              position_ids=torch.arange(seen, seen + n, device=device).unsqueeze(0))  # positions continue after the prefix
        seen += n
        logp = torch.log_softmax(logits[0], dim=-1)
        token = int(torch.argmax(logp))
        new.append(token)
        logprobs.append(float(logp[token]))
        if token in stops:
            break
        step = {"input_ids": torch.tensor([[token]], device=device)}
    return new, logprobs


@torch.inference_mode()
def greedy_generate_batch(model, prefix: PrefixCache | None, bodies: list[list[int]], max_new_tokens: int,
                          stop_ids: list[int], pad_id: int = 0, screen: bool = True,
                          weights: list[list[float]] | None = None) -> list[tuple[list[int], list[float]]]:
    """:func:`greedy_generate` for several inputs at once, one weight read per step for all of them.

    Each row is ``prefix + body``. On a CPU each body goes through the LM alone (:func:`_prefill_alone`:
    there a padded batch only adds work), on a GPU as one padded batch (:func:`_prefill_padded`); the
    rows then decode together, one weight read per step for all of them. Bodies of unequal length are
    padded on the left (on a CPU before the prefix, on a GPU between prefix and body), and the pads
    are masked out and skipped by the positions, so every row sees exactly the positions and tokens
    it sees alone. A row stops at its own stop token and leaves the batch there; the batch stops
    when every row has.

    How exact a row is: on a CPU, with :mod:`odqa.lm.row_attention` (every backbone
    :func:`~odqa.lm.backbone.load_backbone` loads), a row's attention is computed as it is alone, so
    the batch changes only what its matrix multiplies give: in float32 a multiply of several rows
    can differ from one row's in the last bits (greedy tokens have matched: eval/RESULTS.md); an int8
    backbone's products are exact integers and its float layers run row by row
    (:mod:`odqa.lm.quantization`), so each row's logits are its logits alone, bit for bit.

    With ``weights``, consecutive rows decode one answer together, the passage ensemble of REPLUG
    (Shi et al., 2023): each row reads the question with its own passage, and every step's token is
    the argmax of the rows' mixed next-token distribution ``sum_d w_d p_d``, appended to all of them.
    An answer's rows are computed as rows of any other batch, so an answer is the same tokens
    whatever else shares its batch. Through the screened head the mixture reads each row's
    logits as that head gives them: exact for the row's candidates, within its int8 bound elsewhere.

    :param bodies: The token ids after the prefix, one non-empty list per row.
    :param pad_id: Any token id (pads are masked).
    :param screen: As in :func:`greedy_generate`.
    :param weights: ``None``: each row is its own answer. Otherwise one list of weights summing to 1
        per answer, taking that many consecutive rows (``bodies`` in answer order); a reading of
        weight 0 adds nothing to the mixture.
    :returns: ``(new_token_ids, token_logprobs)`` per answer, in order, as :func:`greedy_generate`
        returns; with ``weights`` the log-probabilities are the mixture's.
    """
    if not bodies or any(not b for b in bodies):
        raise PipelineConfigError("greedy_generate_batch takes one or more non-empty token sequences")
    sizes = [1] * len(bodies) if weights is None else [len(w) for w in weights]
    if sum(sizes) != len(bodies) or 0 in sizes:
        raise PipelineConfigError(f"greedy_generate_batch: the weights cover {sum(sizes)} rows in {len(sizes)} "
                                  f"answers (each needs one or more), but there are {len(bodies)} bodies")
    if weights is not None and any(min(w) < 0 or max(w) <= 0 for w in weights):
        raise PipelineConfigError(f"greedy_generate_batch: ensemble weights must be at least 0, and one of each "
                                  f"answer's above 0; got {weights}")
    device = model.get_input_embeddings().weight.device
    head = screened_head(model) if screen else None
    if device.type == "cpu":
        cache, logits, mask, step_pos = _prefill_alone(model, head, prefix, bodies)
    else:
        cache, logits, mask, step_pos = _prefill_padded(model, head, prefix, bodies, pad_id)
    stops = set(stop_ids)
    new: list[list[int]] = [[] for _ in sizes]
    logprobs: list[list[float]] = [[] for _ in sizes]
    log_w = None if weights is None else torch.log(torch.tensor([x for w in weights for x in w], device=device))
    answers = list(range(len(sizes)))  # the answers still decoding, their rows in this order in the batch
    for n_step in range(max_new_tokens):
        if n_step:
            cache, logits = _step(model, head, input_ids=step_ids, past_key_values=cache, attention_mask=mask,
                                  position_ids=step_pos)
            step_pos = step_pos + 1
        logp = torch.log_softmax(logits, dim=-1)
        if log_w is not None:  # each answer's rows -> one mixed distribution
            logp = torch.stack([torch.logsumexp(part, dim=0) for part in
                                torch.split(logp + log_w[:, None], [sizes[i] for i in answers])])
        tokens = torch.argmax(logp, dim=-1)
        keep = []
        for j, i in enumerate(answers):
            t = int(tokens[j])
            new[i].append(t)
            logprobs[i].append(float(logp[j, t]))
            if t not in stops:
                keep.append(j)
        if not keep:
            break
        if log_w is not None:  # every row of an answer takes the answer's token
            tokens = torch.repeat_interleave(tokens, torch.tensor([sizes[i] for i in answers], device=device))
        if len(keep) < len(answers):
            # a finished answer's rows leave the batch: the rest decode on without paying for them
            # (one long answer no longer makes every row of its batch run to max_new_tokens)
            starts = [0]
            for i in answers:
                starts.append(starts[-1] + sizes[i])
            index = torch.tensor([r for j in keep for r in range(starts[j], starts[j + 1])], device=device)
            answers = [answers[j] for j in keep]
            tokens, step_pos, mask = tokens[index], step_pos[index], mask[index]
            if log_w is not None:
                log_w = log_w[index]
            cache.batch_select_indices(index)
        step_ids = tokens.unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return list(zip(new, logprobs))


def _prefill_alone(model, head, prefix: PrefixCache | None, bodies: list[list[int]]):
    """Each row's body through the LM alone, exactly as :func:`greedy_generate` runs it, then the
    rows' keys and values side by side for decoding together (:func:`_side_by_side`).

    On a CPU prefill is compute-bound: a padded batch computes every pad, and shares no weight read
    worth having (over 32 trivia-wiki:dev questions in batches of 8, the padded batch computed about
    1.7 times the tokens and the reader took 0.317 s an answer against 0.278 s one by one). Alone,
    each row also computes exactly the keys, values and first token that it computes alone.

    :returns: ``(cache, [rows, vocab] logits of each body's last position, attention mask over the
        cache, [rows, 1] position of each row's next token)``.
    """
    start = prefix.length if prefix is not None else 0
    device = model.get_input_embeddings().weight.device
    caches, logits = [], []
    for body in bodies:
        n = len(body)
        cache, row = _step(model, head, input_ids=torch.tensor([body], device=device),
                           past_key_values=prefix.fresh() if prefix is not None else None,
                           attention_mask=torch.ones(1, start + n, dtype=torch.long, device=device),
                           position_ids=torch.arange(start, start + n, device=device).unsqueeze(0))
        caches.append(cache)
        logits.append(row)
    lengths = [len(body) for body in bodies]
    positions = torch.tensor([[start + n] for n in lengths], dtype=torch.long, device=device)
    return _side_by_side(caches, start, lengths), torch.cat(logits), _pads_first_mask(lengths, start, device), positions


def _pads_first_mask(lengths: list[int], start: int, device) -> torch.Tensor:
    """The attention mask over a batch cache laid out ``[pads | prefix | body]``, bodies of
    ``lengths`` after a prefix of ``start`` positions: 0 on each row's pads, 1 elsewhere."""
    width = max(lengths)
    mask = torch.zeros((len(lengths), start + width), dtype=torch.long, device=device)
    for i, n in enumerate(lengths):
        mask[i, width - n:] = 1
    return mask


def _check_held(t: torch.Tensor, want: int, whose: str) -> None:
    """Refuse a cache layer that does not hold the ``want`` positions of ``whose`` input."""
    if t.shape[-2] != want:
        raise PipelineConfigError(
            f"greedy_generate_batch: a cache layer holds {t.shape[-2]} positions, not the {want} of {whose} "
            "(a sliding window shorter than the input?); answer such inputs one by one")


def _side_by_side(caches: list, start: int, lengths: list[int]):
    """One batch cache from single-row caches of ``start + lengths[i]`` positions each: every layer's
    keys and values stacked on the batch dimension, each row shifted right behind zeros so the rows
    end together. The pads come first, so a row's own keys and values are a suffix of the batch's,
    which :mod:`odqa.lm.row_attention` reads in place. The first row's cache object is reused."""
    width = max(lengths)
    merged = caches[0]
    for layer, rows in zip(merged.layers, zip(*(c.layers for c in caches))):
        for name in ("keys", "values"):
            parts = []
            for cache_layer, n in zip(rows, lengths):
                t = getattr(cache_layer, name)
                _check_held(t, start + n, "its row")
                parts.append(torch.cat([t.new_zeros((*t.shape[:-2], width - n, t.shape[-1])), t], dim=-2))
            setattr(layer, name, torch.cat(parts, dim=0))
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = start + width
    return merged


def _prefill_padded(model, head, prefix: PrefixCache | None, bodies: list[list[int]], pad_id: int):
    """The bodies as one batch, padded on the left between the shared prefix and the body, the pads
    masked out and skipped by the positions (on a GPU a batch costs little more than a row); then
    each row's pads moved in front of its prefix, the layout :func:`_prefill_alone` leaves.
    Returns what :func:`_prefill_alone` returns."""
    device = model.get_input_embeddings().weight.device
    b, width = len(bodies), max(len(x) for x in bodies)
    start = prefix.length if prefix is not None else 0
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((b, start + width), dtype=torch.long, device=device)
    mask[:, :start] = 1
    positions = torch.full((b, width), start, dtype=torch.long, device=device)
    for i, body in enumerate(bodies):
        n = len(body)
        ids[i, width - n:] = torch.tensor(body, dtype=torch.long, device=device)
        mask[i, start + width - n:] = 1
        positions[i, width - n:] = torch.arange(start, start + n, device=device)
    cache = None
    if prefix is not None:
        cache = prefix.fresh()
        cache.batch_repeat_interleave(b)
    cache, logits = _step(model, head, input_ids=ids, past_key_values=cache, attention_mask=mask, position_ids=positions)
    pads = [width - len(body) for body in bodies]
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name)
            _check_held(t, start + width, "the batch")
            setattr(layer, name, torch.cat([torch.cat([t[i:i + 1, ..., start:start + p, :], t[i:i + 1, ..., :start, :],
                                                       t[i:i + 1, ..., start + p:, :]], dim=-2)
                                            for i, p in enumerate(pads)]))
    return cache, logits, _pads_first_mask([len(body) for body in bodies], start, device), positions[:, -1:] + 1


def _step(model, head, **inputs) -> tuple[object, torch.Tensor]:
    """One forward pass: ``(past_key_values, [rows, vocab] float32 logits of the last position)``,
    through ``head`` (a :class:`~odqa.lm.screened_head.ScreenedHead`) when given."""
    if head is None:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits[:, -1].float()
    out = model.base_model(**inputs, use_cache=True)
    return out.past_key_values, head(out.last_hidden_state[:, -1])


def strip_stops(ids: list[int], stops: list[int], pad_id: int | None) -> list[int]:
    """The answer's tokens: up to (not including) the first stop token, pads dropped."""
    out = []
    for t in ids:
        if t in stops:
            break
        if t != pad_id:
            out.append(t)
    return out


def decode_answer(tokenizer, new_ids: list[int], logprobs, stop_ids: list[int]) -> tuple[str, float]:
    """``(text, score)`` of generated tokens: the text of :func:`strip_stops`' tokens, and the
    geometric-mean probability of the generated tokens. Every reader decodes so."""
    kept = strip_stops(new_ids, set(stop_ids), tokenizer.pad_token_id)
    logprobs = torch.as_tensor(logprobs, dtype=torch.float32)
    score = float(torch.exp(logprobs.mean())) if len(logprobs) else 0.0
    return tokenizer.decode(kept, skip_special_tokens=True), score
