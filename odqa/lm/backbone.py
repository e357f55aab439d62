"""The frozen backbone: loaded once per process, shared by every component, never trained.

``load_backbone("smollm2-135m-instruct")`` dequantizes the bundled GGUF once into
``$ODQA_HOME`` (see :mod:`odqa.resources`); any HF id or local path works too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from odqa.errors import ResourceNotFoundError
from odqa.resources import model_dir

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE: dict[tuple[str, str], "Backbone"] = {}
_LOCK = threading.Lock()


@dataclass
class Backbone:
    name: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

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
    """Eval mode, no gradients: the backbone's weights are never trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_backbone(name: str, dtype: str = "float32") -> Backbone:
    """Load a causal LM by bundled name, local path or HF id, frozen; cached per (name, dtype)."""
    if dtype not in _DTYPES:
        raise ResourceNotFoundError(f"unknown dtype '{dtype}'; use one of {sorted(_DTYPES)}")
    key = (name, dtype)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model_dir(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype])
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        backbone = Backbone(name=name, model=freeze(model), tokenizer=tokenizer)
        _CACHE[key] = backbone
        return backbone

