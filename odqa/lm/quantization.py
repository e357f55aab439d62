"""Int8 linear layers for the frozen backbone on the CPU: fewer bytes and cheaper multiplies per answer.

Each quantized ``nn.Linear`` keeps its weight as int8, one symmetric scale per output channel,
and quantizes its input at run time, one symmetric scale per token; the product is an exact
int8 x int8 matrix multiply with int32 accumulation (:class:`Int8Weight`), rescaled to the
input's dtype. This is the scheme of torchao's ``Int8DynamicActivationInt8Weight``.

Which kernel multiplies depends on the CPU, the answer never does. ``torch._int_mm`` is fast
where the CPU has VNNI (int8 dot products: AVX512-VNNI or AVX-VNNI): there it ran 3-4x as fast
as float32 at the reader's shapes (``bench/floor.py``). Without VNNI it was a hundred times
slower than float32 on an AVX2-only AMD EPYC (1.7 GOP/s; 94-110 ms for one row of Gemma's output
head, against 81 ms in float32). There the product goes through fbgemm, torch's own x86 int8
kernels (``quantized::linear_dynamic``), which are exact only for 7-bit inputs (AVX2 sums pairs
of products in 16 bits): each int8 row is split as ``2 * hi + lo``, both halves in 7 bits, and
one more row pins fbgemm's input scale to 1. One row of Gemma's head took 17-18 ms there, eight
rows 35-42 ms (against 720-750 ms). fbgemm's packed copy holds 1.6 bytes a weight
(eval/RESULTS.md, session 13).

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
- **the float layers take one sequence at a time:** a float32 product of several rows can differ
  from one row's in the last bits (MKL and oneDNN pick kernels by row count), and after int8 rounding
  a last bit can move a value to the next level, and so an answer. The int8 products are exact
  integers, so with the float layers run per sequence (:class:`RowExact`) and attention per row
  (:mod:`odqa.lm.row_attention`), a batch gives each question the logits it gets alone, bit for
  bit: the batched path's promise (``QA.ask_many``, ``odqa serve``) holds for the int8 reader too.

The backbone stays frozen: quantization is for inference only (rounding has no gradient),
so training always runs the float32 backbone.
"""

from __future__ import annotations

import fnmatch
import threading
import warnings

import torch

QUANTIZE = ("int8",)
KEEP_FLOAT = ("lm_head", "*layers.0.*")  # fnmatch patterns on full module names left float (see above)


def int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``t ~ q * scale``: each row of a 2-d tensor rounded to int8 with its own
    symmetric scale (``scale``: ``[rows, 1]`` float32, the row's largest magnitude over 127)."""
    rows = t.float()
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(rows / scale).clamp(-127, 127).to(torch.int8), scale


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # private in torch 2.13; absent: assume no VNNI
    return bool(probe()) if probe is not None else False


def int8_kernel() -> str:
    """The exact int8 kernel that is fast on this CPU: ``"int_mm"`` where it has int8 dot-product
    instructions (VNNI) or fbgemm is missing, else ``"fbgemm"`` (module docstring)."""
    return "int_mm" if has_vnni() or "fbgemm" not in torch.backends.quantized.supported_engines else "fbgemm"


READER_QUANTIZE = (*QUANTIZE, "auto")
"""What a reader's ``quantize`` may say: a scheme, or ``auto`` (:func:`resolve_quantize`)."""


def resolve_quantize(quantize: str | None, device: torch.device) -> str | None:
    """What a reader's ``quantize`` runs as on ``device``. Int8 is for the CPU: on a GPU, none.
    ``auto`` is int8 on a CPU with VNNI, where int8 products ran 3-4x as fast as float32, and none
    elsewhere: without VNNI they were slower than float32 (eval/RESULTS.md, session 13)."""
    if device.type != "cpu":
        return None
    if quantize == "auto":
        return "int8" if has_vnni() else None
    return quantize


_PACK_ROWS = 65536  # rows of a weight fbgemm packs at once (Gemma's head: 4 blocks of 40 MB)
_PACK_LOCK = threading.Lock()  # the quantized engine is process-wide; it is set only while packing


class Int8Weight:
    """An int8 weight ``[out, in]`` whose product with int8 inputs is exact: ``w(x_q)`` is
    ``x_q @ weight_q.T`` in float32 (int32 accumulation; exact while the sums stay below 2**24),
    by ``torch._int_mm`` where the CPU has VNNI and by fbgemm elsewhere on x86 (module docstring)."""

    def __init__(self, weight_q: torch.Tensor, kernel: str | None = None):
        """:param kernel: ``"int_mm"`` or ``"fbgemm"``; by default the fast one for this CPU."""
        if weight_q.dtype != torch.int8 or weight_q.dim() != 2:
            raise ValueError(f"Int8Weight takes a 2-d int8 tensor, got {weight_q.dtype} of shape {tuple(weight_q.shape)}")
        kernel = int8_kernel() if kernel is None else kernel
        if kernel not in ("int_mm", "fbgemm"):
            raise ValueError(f"unknown int8 kernel {kernel!r}; use 'int_mm' or 'fbgemm'")
        self.kernel = kernel
        self._weight_q = weight_q if kernel == "int_mm" else None
        self._packed = []
        if kernel == "fbgemm":
            # fbgemm's own copy, 1.6 bytes a weight, packed a block of rows at a time: packing holds
            # a block's scratch copies at once, not the whole table's
            for block in weight_q.split(_PACK_ROWS):
                self._packed.append(_fbgemm_pack(block))
                # fbgemm keeps the block too, to unpack; where it is a cache file's pages, Linux may
                # reclaim them (read again if touched), so that copy costs no resident memory
                madvise(block, "MADV_PAGEOUT")

    @property
    def weight_q(self) -> torch.Tensor:
        """The int8 weight (for fbgemm, unpacked from its copy: for saving and tests, not per call)."""
        if self._weight_q is not None:
            return self._weight_q
        return torch.cat([torch.ops.quantized.linear_unpack(p)[0].int_repr() for p in self._packed])

    def __call__(self, x_q: torch.Tensor) -> torch.Tensor:
        if not self._packed:
            return torch._int_mm(x_q, self._weight_q.t()).float()
        m = x_q.shape[0]
        x = x_q.to(torch.int16)
        hi = torch.div(x, 2, rounding_mode="floor")  # [-64, 63]
        rows = torch.zeros(2 * m + 1, x.shape[1])
        rows[:m], rows[m:2 * m] = hi, x - 2 * hi  # lo in {0, 1}
        rows[2 * m, 0], rows[2 * m, 1] = -64.0, 63.0  # fbgemm scales its input by its range: here exactly 1
        out = [torch.ops.quantized.linear_dynamic(rows, p, True) for p in self._packed]  # reduce_range: 7-bit inputs
        out = out[0] if len(out) == 1 else torch.cat(out, dim=1)
        return out[:m] * 2 + out[m:2 * m]


def madvise(t: torch.Tensor, advice: str) -> None:
    """``madvise(2)`` on the pages of ``t``'s memory: ``"MADV_RANDOM"``, ``"MADV_PAGEOUT"``, ...
    (names of the :mod:`mmap` module; Linux). Where libc or the advice is missing, nothing."""
    import ctypes
    import mmap

    flag = getattr(mmap, advice, {"MADV_PAGEOUT": 21}.get(advice))  # PAGEOUT: Linux 5.4+
    try:
        call = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # not a libc that has it
        return
    if flag is None:  # an advice this platform does not know
        return
    start = t.data_ptr()
    first = start - start % mmap.PAGESIZE
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call(first, start - first + t.numel() * t.element_size(), flag)


def _fbgemm_pack(weight_q: torch.Tensor):
    """fbgemm's packed copy of ``weight_q`` with unit scales (the caller applies its own)."""
    ones, zeros = torch.ones(weight_q.shape[0], dtype=torch.double), torch.zeros(weight_q.shape[0], dtype=torch.long)
    with _PACK_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 calls its quantized tensors deprecated (torchao is their heir)
        engine = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:
            qweight = torch._make_per_channel_quantized_tensor(weight_q.contiguous(), ones, zeros, 0)
            return torch.ops.quantized.linear_prepack(qweight, None)
        finally:
            torch.backends.quantized.engine = engine


class Int8Linear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` int8 per output channel and ``x`` int8 per token."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight_q, scale = int8_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.int8 = Int8Weight(weight_q)
        self.shared: tuple[SharedInput, int] | None = None  # set by SharedInput: (its group, this layer's place)
        self.register_buffer("scale", scale[:, 0])
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            return self.shared[0].output(x, self.shared[1])
        return _int8_product(x, self.int8, self.scale, self.bias)

    @property
    def weight_q(self) -> torch.Tensor:
        if self.shared is not None:
            group, i = self.shared
            start = sum(group.widths[:i])
            return group.int8.weight_q[start:start + self.out_features]
        return self.int8.weight_q

    def extra_repr(self) -> str:
        int8 = self.int8 if self.shared is None else self.shared[0].int8
        shared = "" if self.shared is None else ", input shared"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({int8.kernel}{shared})"


class RowExact:
    """Mixed into a float ``nn.Linear`` (or subclass) of an int8 backbone: a batch of several
    sequences (``[batch, tokens, in]``, batch > 1) is multiplied one sequence at a time, each exactly
    as it is alone. Only decoding steps of a batch take this path (prefills run one sequence anyway);
    the price is one more read of the layer's weights per row per step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[0] > 1:
            forward = super().forward  # (a comprehension's scope has no zero-argument super)
            return torch.cat([forward(x[i:i + 1]) for i in range(x.shape[0])])
        return super().forward(x)


_ROW_EXACT: dict[type, type] = {}


def row_exact_class(base: type) -> type:
    """The :class:`RowExact` subclass of ``base`` (one per class)."""
    if base not in _ROW_EXACT:
        _ROW_EXACT[base] = type(f"RowExact{base.__name__}", (RowExact, base), {})
    return _ROW_EXACT[base]


def row_exact(linear: torch.nn.Linear) -> None:
    """Make ``linear`` (its own module object; its tensors may be shared) a :class:`RowExact` of its
    class, in place: the same weights, the same state dict."""
    if not isinstance(linear, RowExact):
        linear.__class__ = row_exact_class(type(linear))


def _int8_product(x: torch.Tensor, int8: Int8Weight, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` for an int8 ``W`` (rows scaled by ``scale``): ``x`` rounded to int8 per token."""
    shape = x.shape
    x_q, x_scale = int8_rows(x.reshape(-1, shape[-1]))
    y = int8(x_q) * x_scale * scale
    if bias is not None:
        y = y + bias
    return y.reshape(*shape[:-1], scale.shape[0]).to(x.dtype)


class SharedInput:
    """Int8 layers that read the same input (an attention's query, key and value projections; an
    MLP's gate and up projections): the input is rounded to int8 once and multiplied once by their
    weights stacked, and each layer takes its columns. Every column is the number the layer alone
    computes (the same integer products, rescaled element by element), so the answers do not change;
    a decoding step runs 4 products and 4 roundings a layer instead of 7 and 7.

    Each layer's call with the very input tensor of the last product takes its part of that product,
    and the product is let go once every layer has taken its part; any other input is multiplied
    anew. The last product is kept per thread."""

    def __init__(self, layers: list[Int8Linear]):
        if len({layer.in_features for layer in layers}) != 1 or len({layer.bias is None for layer in layers}) != 1:
            raise ValueError("SharedInput stacks int8 layers of one input size, all with a bias or none")
        self.widths = [layer.out_features for layer in layers]
        self.int8 = Int8Weight(torch.cat([layer.weight_q for layer in layers]))
        self.scale = torch.cat([layer.scale for layer in layers])
        self.bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
        self._last = threading.local()
        for i, layer in enumerate(layers):
            layer.int8 = None  # its rows live in the stack now
            layer.shared = (self, i)

    def output(self, x: torch.Tensor, i: int) -> torch.Tensor:
        last = getattr(self._last, "value", None)
        if last is None or last[0] is not x or last[1][i] is None:
            parts = _int8_product(x, self.int8, self.scale, self.bias).split(self.widths, dim=-1)
            last = (x, [part.contiguous() for part in parts])
            self._last.value = last
        out, last[1][i] = last[1][i], None
        if all(part is None for part in last[1]):
            self._last.value = None
        return out


SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling layers (transformers' names) that read one input in the decoder layers of Llama, Gemma,
Qwen and Mistral alike."""


def quantize_int8(model: torch.nn.Module, keep_float: tuple[str, ...] = KEEP_FLOAT) -> int:
    """Replace, in place, every ``nn.Linear`` whose full name (``model.layers.3.mlp.up_proj``,
    ``lm_head``) matches none of the ``keep_float`` patterns (``fnmatch``) by an :class:`Int8Linear`,
    and make the others :func:`row_exact`; returns how many were replaced. The float weights the
    replaced layers held are freed, except an output head tied to the input embeddings: the
    embeddings keep their float table, and the head reads an int8 copy. Where those weights are
    still another model's (the float backbone an int8 twin is built from,
    :func:`odqa.lm.backbone.load_backbone`), their pages are paged out once read (``MADV_PAGEOUT``:
    a memory-mapped weights file's pages are read again if that model runs), so a process holding
    the twin does not keep both copies resident."""
    swaps, kept = [], []
    for prefix, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear):
                full = f"{prefix}.{name}" if prefix else name
                (kept if any(fnmatch.fnmatchcase(full, pattern) for pattern in keep_float) else swaps).append(
                    (parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, Int8Linear(child))
        madvise(child.weight, "MADV_PAGEOUT")
    for _, _, child in kept:
        row_exact(child)
    for module in model.modules():
        for names in SHARED_INPUTS:
            layers = [getattr(module, name, None) for name in names]
            if all(isinstance(layer, Int8Linear) and layer.shared is None for layer in layers):
                SharedInput(layers)
    return len(swaps)
