"""Float32 linear layers through oneDNN on the CPU: the same products, in half the time here.

torch multiplies a float32 ``nn.Linear`` on the CPU through MKL's ``sgemm``. On the AMD EPYC
machines this project runs on, MKL takes a slow path: at the reader's shapes (Gemma-3-270m's
seven projections, 136 rows) it reached 155-176 GFLOP/s, and one row (a decoding step) read the
weights at 16 GB/s. oneDNN, the other CPU library inside torch, multiplies the same float32
weights, unchanged and unpacked, at 337 GFLOP/s and 30 GB/s (``bench/floor.py`` measures both;
eval/RESULTS.md, session 15). So every frozen model's ``nn.Linear`` layers run through oneDNN's
``mkldnn::_linear_pointwise``, the op torch's own compiler emits for CPU linears.

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

import torch
import torch.nn.functional as F


def available() -> bool:
    """Whether this torch build has oneDNN and its linear op (a private op of torch 2.13's CPU builds)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


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
    it as it is). Returns how many layers changed; 0 where :func:`available` is false."""
    if not available():
        return 0
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module is not head:
            module.__class__ = OneDNNLinear
            changed += 1
    return changed
