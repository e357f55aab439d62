"""The frozen backbone: loaded once per process, shared by every component, never trained.

``load_backbone("smollm2-135m-instruct")`` dequantizes the bundled GGUF once into
``$ODQA_HOME`` (see :mod:`odqa.resources`); any HF id or local path works too.

The device is ``$ODQA_DEVICE``: ``auto`` (the default: CUDA when torch sees a GPU, else
the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Every module trained or run around the
backbone lives on ``backbone.device``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from odqa.errors import PipelineConfigError, ResourceNotFoundError
from odqa.resources import model_dir

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE: dict[tuple[str, str, str, str | None], "Backbone"] = {}
_TOKENIZERS: dict[str, object] = {}  # name -> tokenizer, shared by every backbone of that name
_LOCK = threading.Lock()


@dataclass
class Backbone:
    name: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    def soft_prompt(self, path) -> torch.nn.Module:
        """A soft prompt artifact, checked against this backbone, frozen, on its device."""
        from odqa.lm.soft_prompt import SoftPrompt

        return freeze(SoftPrompt.load(path, self.name, self.hidden_size).to(self.device))

    @property
    def stop_token_ids(self) -> list[int]:
        """EOS, chat end-of-turn and newline: a span answer ends at any of them."""
        tok = self.tokenizer
        ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = tok.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
                ids.add(tid)
        newline = tok.encode("\n", add_special_tokens=False)
        if len(newline) == 1:
            ids.add(newline[0])
        return sorted(ids)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no gradients: the backbone's weights are never trained. Its linear layers run
    through oneDNN on the CPU (:mod:`odqa.lm.onednn`), and a decoding step's attention row by row
    (:mod:`odqa.lm.row_attention`)."""
    from odqa.lm.onednn import use_onednn
    from odqa.lm.row_attention import use_row_attention

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    use_onednn(model)
    use_row_attention(model)
    return model


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """New modules holding the very tensors of ``model``: what a copy then replaces or wraps (int8
    layers, LoRA adapters) is its own, and everything else stays one tensor in memory."""
    import copy
    import itertools

    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, shared)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$ODQA_DEVICE``, else ``auto``: CUDA when torch sees a GPU, else the CPU."""
    name = str(device if device is not None else os.environ.get("ODQA_DEVICE") or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise PipelineConfigError(f"unknown device '{name}'; set ODQA_DEVICE to auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PipelineConfigError(f"device '{name}' was asked for, but torch sees no CUDA GPU here; "
                                  "set ODQA_DEVICE=cpu (or auto)")
    return resolved


def load_backbone(name: str, dtype: str = "float32", device: str | torch.device | None = None,
                  quantize: str | None = None) -> Backbone:
    """Load a causal LM by bundled name, local path or HF id, frozen, on ``device`` (see
    :func:`resolve_device`); cached per (name, dtype, device, quantize).

    ``quantize="int8"`` replaces its linear layers by int8 ones (:mod:`odqa.lm.quantization`),
    for inference on the CPU; training loads the unquantized backbone."""
    from odqa.lm.quantization import QUANTIZE

    if dtype not in _DTYPES:
        raise ResourceNotFoundError(f"unknown dtype '{dtype}'; use one of {sorted(_DTYPES)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise PipelineConfigError(f"unknown quantize '{quantize}'; use one of {list(QUANTIZE)} or null")
    where = resolve_device(device)
    if quantize is not None and where.type != "cpu":
        raise PipelineConfigError(f"quantize: {quantize} is for the CPU, but the backbone would run on {where}; "
                                  "set quantize: null (dtype: bfloat16 is the GPU's cheaper precision) "
                                  "or ODQA_DEVICE=cpu")
    with _LOCK:
        return _load(name, dtype, where, quantize)


def _load(name: str, dtype: str, where: torch.device, quantize: str | None) -> Backbone:
    key = (name, dtype, str(where), quantize)
    if key not in _CACHE:
        if quantize == "int8":
            from odqa.lm.quantization import quantize_int8

            # built from the float backbone and sharing its embeddings, norms and float layers, so a
            # process serving both holds one embedding table (Gemma's is 671 MB), not two
            plain = _load(name, dtype, where, None)
            twin = shared_copy(plain.model)  # new modules, the same tensors; quantized in place below
            quantize_int8(twin)
            _CACHE[key] = Backbone(name=name, model=twin, tokenizer=plain.tokenizer)
        else:
            from transformers import AutoModelForCausalLM

            path = model_dir(name)
            tokenizer = _tokenizer(name, path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype])
            _CACHE[key] = Backbone(name=name, model=freeze(model.to(where)), tokenizer=tokenizer)
    return _CACHE[key]


def load_tokenizer(name: str):
    """A backbone's tokenizer without its weights (what the context packer needs to count tokens),
    cached per name and shared with every backbone of that name."""
    with _LOCK:
        return _tokenizer(name, model_dir(name))


def _tokenizer(name: str, path):
    if name not in _TOKENIZERS:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        if (Path(path) / "tokenizer.json").is_file():
            # the fast tokenizer's file, wrapped as it is: a model's own class can keep Python copies of
            # its vocabulary and merges beside it (GemmaTokenizer: 160 MB for 262,144 tokens), and
            # encodes the same (tests/lm/test_backbone.py compares them over the bundled corpus)
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        _TOKENIZERS[name] = tokenizer
    return _TOKENIZERS[name]


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, by name, in a fixed order (dtype and shape included)."""
    h = hashlib.sha256()
    state = model.state_dict(keep_vars=False)
    seen: set[int] = set()
    for name in sorted(state):
        t = state[name]
        if t.data_ptr() in seen and t.numel():  # tied weights (e.g. lm_head = embed_tokens) hash once
            continue
        seen.add(t.data_ptr())
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
