"""Attention for a decoding step that gives each row of a batch exactly what it gives alone.

A batch decodes its questions together so that each step reads the weights once for all of them
(:func:`odqa.lm.generation.greedy_generate_batch`). Its rows differ in length, so their keys and
values are padded to one width, and the pads are masked. Torch's fused attention then still sums
each row over the padded width, in an order that depends on where the pads fall, so a row's output
differs from its output alone in the last bits. In float32 that rarely moves a greedy answer; after
int8 rounding (:mod:`odqa.lm.quantization`), where a last-bit change can move a value to the next
level, it moved 3 of 60 ``trivia-wiki:dev`` answers (session 19).

So a one-token step runs attention row by row, each row over its own keys only: the batch lays
every row's pads first (``[pads | prefix | body | answer so far]``), so a row's own keys are a
contiguous suffix of the padded ones, read in place as a view. A question decoded alone runs the
same function over all of its keys, so both compute the very same products in the same order.
Steps of more than one token (prefills, training) go to torch's fused attention as before
(``sdpa``, what transformers runs by default). A mask that is not a suffix per row (a GPU batch
padded after its prefix) also goes there: correct, but not exact per row.

The attention is the plain one: softmax of scaled dot products (capped where the model caps
them), keys and values shared by groups of query heads (GQA). One step is one query per row, so
the row loop costs little next to the layer's matrix multiplies.

Usage:
    >>> use_row_attention(model)   # in place; True where the model now runs it
"""

from __future__ import annotations

import threading

import torch

NAME = "odqa_rows"
"""The name this attention is registered under in transformers' attention interface."""

_LOCK = threading.Lock()
_REGISTERED = False
_MEMO = threading.local()  # the last mask seen and its rows' starts: every layer of a step shares one


def register() -> None:
    """Register :func:`row_attention` with transformers (once per process), with sdpa's masks."""
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, row_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _REGISTERED = True


def use_row_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` (a transformers model running ``sdpa``) to :func:`row_attention`, in place.
    Returns whether it did; a model on another attention (eager, flash) is left as it is."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    register()
    if config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME


def row_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: ``query`` ``[batch, heads, q, dim]``, ``key`` and
    ``value`` ``[batch, kv_heads, length, dim]``; returns ``([batch, q, heads, dim], None)``."""
    starts = None
    if query.shape[2] == 1 and not dropout and not (torch.is_grad_enabled() and query.requires_grad):
        starts = _row_starts(attention_mask, query.shape[0], key.shape[2])
    if starts is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    rows, heads, _, dim = query.shape
    groups = key.shape[1]
    scale = dim ** -0.5 if scaling is None else scaling
    softcap = kwargs.get("softcap")
    out = query.new_empty((rows, 1, heads, value.shape[-1]))
    for i, start in enumerate(starts):
        q = query[i].reshape(groups, heads // groups, dim)  # query head h reads key head h // (heads / groups)
        scores = torch.matmul(q, key[i, :, start:].transpose(-1, -2)) * scale  # [groups, heads/groups, n]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        out[i, 0] = torch.matmul(weights, value[i, :, start:]).reshape(heads, -1)
    return out, None


def _row_starts(mask: torch.Tensor | None, rows: int, length: int) -> list[int] | None:
    """Where each row's own keys begin, if each row attends to a suffix of the ``length`` keys and to
    nothing else (``None`` mask: every row to all); else ``None``."""
    if mask is None:
        return [0] * rows
    memo = getattr(_MEMO, "last", None)
    if memo is not None and memo[0] is mask and memo[1] == (rows, length):
        return memo[2]
    starts = None
    if mask.dim() == 4 and mask.shape[-1] == length and mask.shape[0] in (1, rows):
        valid = mask[:, 0, -1, :] if mask.dtype == torch.bool else mask[:, 0, -1, :] == 0
        first = (~valid).sum(dim=-1)
        suffix = torch.arange(length, device=mask.device)[None, :] >= first[:, None]
        if torch.equal(valid, suffix) and bool((first < length).all()):
            starts = first.expand(rows).tolist() if first.shape[0] == 1 else first.tolist()
    _MEMO.last = (mask, (rows, length), starts)
    return starts
