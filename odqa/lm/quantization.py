"""Int8 linear layers for the frozen backbone on the CPU: fewer bytes and cheaper multiplies per answer.

Each quantized ``nn.Linear`` keeps its weight as int8, one symmetric scale per output channel,
and quantizes its input at run time, one symmetric scale per token; the product is
``torch._int_mm`` (int8 x int8, exact int32 accumulation), rescaled to the input's dtype.
This is the scheme of torchao's ``Int8DynamicActivationInt8Weight``, run by torch's own int8
kernel, which on this machine multiplies 3-4x as fast as float32 at the reader's shapes (``bench/floor.py``).

What is int8 and what is not (``bench/int8_reader.py`` compares the choices on dev questions):

- **activations are scaled per token.** torch's eager ``quantize_dynamic`` scales the whole
  activation tensor at once, so a few large activations (frequent in LMs: Dettmers et al.
  2022, "LLM.int8()"; Xiao et al. 2023, "SmoothQuant") flatten every other token to a few
  levels; its answers collapse.
- **the first decoder layer stays float:** in Gemma-3-270m its inputs carry by far the largest
  activations, which a per-token scale cannot absorb; keeping it float kept dev EM where
  quantizing every layer lost it.
- **the output head stays float:** quantizing its input (the final hidden state) moved the
  argmax of enough answers to cost EM on dev; torch's weight-only int8 kernel
  (``_weight_int8pack_mm``), which would not, runs slower than float32 here.

The backbone stays frozen: quantization is for inference only (rounding has no gradient),
so training always runs the float32 backbone.
"""

from __future__ import annotations

import fnmatch

import torch

QUANTIZE = ("int8",)
KEEP_FLOAT = ("lm_head", "*layers.0.*")  # fnmatch patterns on full module names left float (see above)


def int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``t ~ q * scale``: each row of a 2-d tensor rounded to int8 with its own
    symmetric scale (``scale``: ``[rows, 1]`` float32, the row's largest magnitude over 127)."""
    rows = t.float()
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(rows / scale).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` int8 per output channel and ``x`` int8 per token."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight_q, scale = int8_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # [out, in] like nn.Linear's weight, handed to _int_mm as its transpose: at one or a few rows
        # (decoding) this layout ran faster than an [in, out] copy in a scratch timing here
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("scale", scale[:, 0])
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_q, x_scale = int8_rows(x.reshape(-1, shape[-1]))
        y = torch._int_mm(x_q, self.weight_q.t()).float() * x_scale * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: torch.nn.Module, keep_float: tuple[str, ...] = KEEP_FLOAT) -> int:
    """Replace, in place, every ``nn.Linear`` whose full name (``model.layers.3.mlp.up_proj``,
    ``lm_head``) matches none of the ``keep_float`` patterns (``fnmatch``) by an :class:`Int8Linear`;
    returns how many were replaced. The float weights the replaced layers held are freed, except an
    output head tied to the input embeddings: the embeddings keep their float table, and the head
    reads an int8 copy."""
    swaps = [(parent, name, child) for prefix, parent in model.named_modules()
             for name, child in parent.named_children()
             if isinstance(child, torch.nn.Linear)
             and not any(fnmatch.fnmatchcase(f"{prefix}.{name}" if prefix else name, pattern) for pattern in keep_float)]
    for parent, name, child in swaps:
        setattr(parent, name, Int8Linear(child))
    return len(swaps)
