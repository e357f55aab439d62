"""Float32 linear layers through oneDNN on the CPU: the same products, in half the time on AVX-512.

torch multiplies a float32 ``nn.Linear`` on the CPU through MKL's ``sgemm``. On the AVX-512 AMD
EPYC machine of session 16, MKL took a slow path: at the reader's shapes (Gemma-3-270m's seven
projections, 136 rows) it reached 159 GFLOP/s, and one row (a decoding step) read the weights at
16 GB/s. oneDNN, the other CPU library inside torch, multiplied the same float32 weights, unchanged
and unpacked, at 338 GFLOP/s and 30 GB/s (``bench/floor.py`` measures both; eval/RESULTS.md). So
there every frozen model's ``nn.Linear`` layers run through oneDNN's ``mkldnn::_linear_pointwise``,
the op torch's own compiler emits for CPU linears.

Only there: on an AVX2-only EPYC (session 17) oneDNN was 1.08x MKL at 136 rows but 0.67x at one
row, and the batch-8 run of the default peaked 330,288 KiB higher with it (2,125,452 against
1,795,164 KiB; capping oneDNN's primitive cache, which keeps memory per shape, at 8 entries gave
back 148,816 KiB of it). So
:func:`chosen` picks oneDNN only on CPUs whose ATen capability is AVX-512; ``ODQA_ONEDNN=1`` or
``0`` overrides that.

oneDNN keeps every primitive it builds (one per layer shape and row count: each question's prefill
length is a new one) in a cache of 1,024 by default, and the cache is memory. On this AVX-512 EPYC
(session 18) the batch-8 run of the default peaked at 2,023,764 KiB with it, against 1,722,844 KiB
through MKL; capped at :data:`PRIMITIVE_CACHE` primitives it peaked at 1,857,156 KiB and ran as
fast (87.7 s against 90.7 s; 16: 1,853,772 KiB, 92.7 s; 256: 1,920,016 KiB, 91.1 s). So where
oneDNN is chosen, ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` defaults to that cap (a value already set
in the environment is kept). oneDNN reads it when it first builds a primitive, so it is set before
any layer runs.

Nothing else changes: the layer is still an ``nn.Linear`` (:class:`OneDNNLinear` is a subclass
set in place, holding the very same ``weight`` and ``bias`` tensors), so state dicts, weight
hashes, shared tensors and LoRA wrapping see no difference. The results are float32 products
in another summation order (differences in the last bits; over 40 dev questions every answer
was the same). Where a gradient is needed (training a soft prompt or a LoRA adapter through a
frozen model), for another dtype or device, or where this torch build lacks the op, the layer
runs ``torch.nn.functional.linear`` as before.

Usage:
    >>> use_onednn(model)   # in place; returns how many layers now run through oneDNN
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from odqa.errors import PipelineConfigError


PRIMITIVE_CACHE = 64
"""How many oneDNN primitives are kept where odqa turns oneDNN on (the env var wins; see above)."""


def available() -> bool:
    """Whether this torch build has oneDNN and its linear op (a private op of torch 2.13's CPU builds)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def chosen() -> bool:
    """Whether frozen float32 linears go through oneDNN here: where :func:`available`, on a CPU with
    AVX-512 (measured faster there, slower on AVX2; see the module docstring), unless the environment
    variable ``ODQA_ONEDNN`` says ``1`` (always, where available) or ``0`` (never)."""
    forced = os.environ.get("ODQA_ONEDNN", "").strip()
    if forced not in ("", "0", "1"):
        raise PipelineConfigError(f"ODQA_ONEDNN is {forced!r}; set it to 1 (oneDNN), 0 (MKL) or leave it "
                                  "unset (oneDNN on AVX-512 CPUs only)")
    if not available():
        return False
    if forced:
        return forced == "1"
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class OneDNNLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose inference forward on float32 CPU tensors is oneDNN's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype is not torch.float32 or w.dtype is not torch.float32 or x.device.type != "cpu"
                or w.device.type != "cpu" or x.dim() < 2
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad
                                                  or (self.bias is not None and self.bias.requires_grad)))):
            return F.linear(x, w, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")


def use_onednn(model: torch.nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` an :class:`OneDNNLinear`, in place, except a causal
    LM's output head (greedy decoding reads it through :mod:`odqa.lm.screened_head`, which wants
    it as it is), and cap oneDNN's primitive cache at :data:`PRIMITIVE_CACHE` unless the
    environment already sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``. Returns how many layers
    changed; 0 where :func:`chosen` is false."""
    if not chosen():
        return 0
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE))
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module is not head:
            module.__class__ = OneDNNLinear
            changed += 1
    return changed
