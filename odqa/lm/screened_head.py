"""The output head for greedy decoding: screened in int8, the argmax checked in float.

At every decoding step the frozen LM's output head multiplies the last hidden state by the
whole vocabulary: for Gemma-3-270m a 262,144 x 640 float32 table (671 MB, the embeddings
tied to it), read once per step for a handful of new tokens, so the head alone costs about as
much as the rest of the model on this machine (``bench/floor.py``). Greedy decoding needs only
the argmax and its log-probability, so :class:`ScreenedHead` computes the logits in int8 (a
quarter of the bytes, and torch's int8 kernel), takes the ``candidates`` best, recomputes those
exactly from the float table, and proves the argmax: every other token's int8 logit plus a bound
on its rounding error must stay below the best exact logit. Where the proof fails (rare) the
row is computed in full float32 instead. So the chosen token is the float head's argmax (up to
float32's own summation order), and its log-probability is normalised over logits that are exact
for the candidates and within the bound elsewhere.

The bound, per vocabulary row ``r``: with the weight row rounded as ``w_r ~ s_r q_r`` (error at
most ``s_r / 2`` per entry) and the hidden state as ``h ~ x_s q_h`` (error at most ``x_s / 2``),
``|w_r . h - s_r x_s (q_r . q_h)| <= s_r / 2 * |h|_1 + s_r |q_r|_1 * x_s / 2``.

Usage:
    >>> head = screened_head(model)             # once per model; None where it does not apply
    >>> logits = head(hidden[:, -1])            # [rows, vocab], argmax exact
"""

from __future__ import annotations

import threading

import torch

CANDIDATES = 64  # logits recomputed exactly per row; the proof holds for nearly every step with these
_SLACK = 1e-4  # added to the bound, for float32 rounding in the int8 logits' rescaling


class ScreenedHead:
    """``hidden -> logits`` for a float ``nn.Linear`` head (optionally soft-capped), argmax-exact."""

    def __init__(self, head: torch.nn.Linear, softcap: float | None = None, candidates: int = CANDIDATES):
        weight = head.weight.detach()
        self.weight = weight  # the float table itself (shared with the model, not copied)
        self.bias = None if head.bias is None else head.bias.detach().float()
        w = weight.float()
        self.scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.weight_q = torch.round(w / self.scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.row_l1 = self.weight_q.abs().sum(dim=1, dtype=torch.int32).float() * self.scale  # s_r |q_r|_1
        self.softcap = softcap
        self.candidates = min(candidates, weight.shape[0])
        self.fallbacks = 0  # rows computed in full float32 because the proof failed

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def _float(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = (hidden.to(self.weight.dtype) @ self.weight.t()).float()
        return logits if self.bias is None else logits + self.bias

    def exact(self, hidden: torch.Tensor) -> torch.Tensor:
        """The float head's logits, ``[rows, vocab]`` float32."""
        return self._cap(self._float(hidden))

    def screen(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(int8 logits, bound)``, each ``[rows, vocab]``: the float head's logits lie within
        ``bound`` of the int8 ones (before any soft cap)."""
        h = hidden.float()
        x_scale = h.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        h_q = torch.round(h / x_scale).clamp(-127, 127).to(torch.int8)
        approx = torch._int_mm(h_q, self.weight_q.t()).float() * x_scale * self.scale
        if self.bias is not None:
            approx = approx + self.bias
        bound = self.scale * (h.abs().sum(dim=1, keepdim=True) / 2) + self.row_l1 * (x_scale / 2) + _SLACK
        return approx, bound

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits for ``hidden`` (``[rows, dim]``): exact for each row's candidates, their argmax
        the float head's."""
        approx, bound = self.screen(hidden)
        top = approx.topk(self.candidates, dim=1).indices  # [rows, k]
        exact = torch.einsum("rd,rkd->rk", hidden.to(self.weight.dtype), self.weight[top]).float()
        if self.bias is not None:
            exact = exact + self.bias[top]
        ceiling = (approx + bound).scatter(1, top, float("-inf")).amax(dim=1)  # the best any other token could be
        logits = approx.scatter(1, top, exact)
        failed = (exact.amax(dim=1) <= ceiling).nonzero().flatten()
        if failed.numel():
            self.fallbacks += int(failed.numel())
            logits[failed] = self._float(hidden[failed])
        return self._cap(logits)


_HEADS: dict[int, ScreenedHead | None] = {}
_LOCK = threading.Lock()


def screened_head(model) -> ScreenedHead | None:
    """The process-wide :class:`ScreenedHead` of a causal LM whose output head is a float
    ``nn.Linear`` on the CPU (built on first use; models sharing a head table share it), or
    ``None`` where screening does not apply (another head, a GPU: there the float head is cheap)."""
    head = getattr(model, "lm_head", None)
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu" or not head.weight.is_floating_point():
        return None
    key = head.weight.data_ptr()
    with _LOCK:
        if key not in _HEADS:
            softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
            _HEADS[key] = ScreenedHead(head, softcap)
        return _HEADS[key]
