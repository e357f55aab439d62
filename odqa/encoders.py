"""Dense encoders: any sentence-transformers model, or a DPR question/context pair.

:func:`load_encoder` picks the family from the model files (``model_type == "dpr"``)
or, for hub ids, from the name. Sentence-transformers embeddings are L2-normalised
so FAISS inner product is cosine similarity; DPR embeddings are used raw, with
inner product, as in DPR.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from odqa.errors import ResourceNotFoundError
from odqa.lm.onednn import use_onednn
from odqa.resources import resolve_model

# Encoded at index time and again at load time: if the two embeddings differ, the
# index was built with another encoder than the pipeline's.
PROBE_TEXT = "odqa encoder probe: the quick brown fox jumps over the lazy dog"


def _is_dpr(ref_path: str, name: str) -> bool:
    cfg = Path(ref_path) / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text()).get("model_type") == "dpr"
        except (OSError, json.JSONDecodeError):
            return False
    return "dpr" in name.lower()


class SentenceTransformerEncoder:
    kind = "sentence-transformers"
    normalize = True

    def __init__(self, name: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(resolve_model(name).path, device=device)
        use_onednn(self.model)  # its linear layers through oneDNN on the CPU (odqa/lm/onednn.py)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode_passages(self, titles: list[str], texts: list[str], batch_size: int = 16) -> np.ndarray:
        joined = [f"{t}\n{x}" if t else x for t, x in zip(titles, texts)]
        return self._encode(joined, batch_size)

    def encode_queries(self, queries: list[str], batch_size: int = 64) -> np.ndarray:
        return self._encode(queries, batch_size)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        emb = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(emb, dtype=np.float32)


class DPREncoder:
    """DPR: separate question and context encoders, [CLS] pooler output, inner product."""

    kind = "dpr"
    normalize = False

    def __init__(self, name: str, query_name: str | None = None, device: str = "cpu"):
        import torch
        from transformers import AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder

        self.name = name
        if not query_name and "ctx_encoder" not in name:
            raise ResourceNotFoundError(
                f"DPR context encoder '{name}' needs its question encoder; pass --query-encoder "
                "(the retriever's query_encoder) naming the matching DPRQuestionEncoder"
            )
        self.query_name = query_name or name.replace("ctx_encoder", "question_encoder")
        ctx_path, q_path = resolve_model(name).path, resolve_model(self.query_name).path
        self._torch = torch
        self.ctx_tok = AutoTokenizer.from_pretrained(ctx_path)
        self.ctx = DPRContextEncoder.from_pretrained(ctx_path).eval().to(device)
        self.q_tok = AutoTokenizer.from_pretrained(q_path)
        self.q = DPRQuestionEncoder.from_pretrained(q_path).eval().to(device)
        use_onednn(self.ctx)
        use_onednn(self.q)
        self.device = device
        self.dim = int(self.ctx.config.projection_dim or self.ctx.config.hidden_size)

    def _run(self, model, tok, first, second, batch_size):
        out = []
        for i in range(0, len(first), batch_size):
            args = (first[i : i + batch_size],) + ((second[i : i + batch_size],) if second else ())
            enc = tok(*args, padding=True, truncation=True, max_length=256, return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                out.append(model(**enc).pooler_output.float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def encode_passages(self, titles: list[str], texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self._run(self.ctx, self.ctx_tok, titles, texts, batch_size)  # DPR: title [SEP] text

    def encode_queries(self, queries: list[str], batch_size: int = 32) -> np.ndarray:
        return self._run(self.q, self.q_tok, queries, None, batch_size)


def transformer_slot(model) -> str:
    """The attribute of a ``SentenceTransformer``'s first module that holds its transformer:
    sentence-transformers >= 6 keeps it as ``model`` (``auto_model`` is a read-only alias), older
    releases as ``auto_model``."""
    import torch

    return "model" if isinstance(getattr(model[0], "model", None), torch.nn.Module) else "auto_model"


def share_weights(module, name: str) -> int:
    """Point ``module``'s parameters at the same-named, equal ones of this process's cached
    sentence-transformers encoder ``name`` (:func:`load_encoder`), when ``module`` is that encoder's
    transformer class loaded from the same checkpoint through another head (a cross-encoder's
    body, ID-PT's frozen encoder): one copy of those weights in memory, not two. Only tensors equal
    in name, shape, dtype, device and value are shared (a head initialised afresh is not); returns
    how many. Only frozen parameters (``requires_grad`` off) are shared, and stay frozen."""
    import torch

    encoder = load_encoder(name)
    if not isinstance(encoder, SentenceTransformerEncoder):
        return 0
    inner = getattr(encoder.model[0], transformer_slot(encoder.model))
    if type(inner) is not type(module):
        return 0
    theirs = dict(inner.named_parameters())
    shared = 0
    for key, mine in list(module.named_parameters()):
        other = theirs.get(key)
        if (other is None or other is mine or mine.requires_grad or other.shape != mine.shape
                or other.dtype != mine.dtype or other.device != mine.device or not torch.equal(other, mine)):
            continue
        other.requires_grad_(False)  # frozen for both: the retriever only ever embeds without gradients
        parent, _, leaf = key.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, other)
        shared += 1
    return shared


def load_encoder(name: str, query_name: str | None = None, device: str = "cpu"):
    """Load (once per process) the encoder named by a bundled name, local path or HF id, on
    ``device`` (``cuda`` in a Ray encoder that holds GPUs)."""
    return _load_encoder(name, query_name, device)  # one cache key however the call spells its defaults


@lru_cache(maxsize=4)
def _load_encoder(name: str, query_name: str | None, device: str):
    ref = resolve_model(name)
    if _is_dpr(ref.path, name):
        return DPREncoder(name, query_name, device)
    return SentenceTransformerEncoder(name, device)


def probe_embedding(encoder) -> np.ndarray:
    return encoder.encode_queries([PROBE_TEXT])[0]
