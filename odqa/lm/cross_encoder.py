"""The cross-encoder re-ranker's model code (paper, Section 3): load a base encoder as a
one-output sequence classifier (frozen), a re-ranker artifact (a LoRA adapter and head on that
base, made by ``odqa train reranker``), or any sentence-transformers ``CrossEncoder``; score
(question, passage) pairs with it.

    score = load_scorer("pipelines/artifacts/reranker-minilm-noisy-real", batch_size=32, max_length=512)
    score([("Who wrote Hamlet?", pair_text("Hamlet", "Hamlet is a tragedy by ..."))])   # -> [logit]
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from odqa.artifacts import read_manifest
from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError
from odqa.lm.backbone import weights_hash
from odqa.resources import resolve_model

KIND = "reranker"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def pair_text(title: str, text: str) -> str:
    """The passage side of a (question, passage) pair: the ranker scores, and the trainer trains, this form."""
    return f"{title}\n{text}"


BATCH_TOKENS = 2048  # padded tokens per forward pass: on CPU, big attention maps cost more than they save


def score_pairs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32,
                max_length: int = 512) -> list[float]:
    """Raw relevance logits of a one-output sequence-classification model, in the order of ``pairs``.

    Pairs are batched by token length, longest first, at most ``batch_size`` pairs and about
    ``BATCH_TOKENS`` padded tokens a batch (measured on 2 cores: 30 passages in half the time of
    one 30-pair batch).
    """
    import torch

    if not pairs:
        return []
    enc = tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    order = sorted(range(len(pairs)), key=lambda i: lengths[i], reverse=True)
    batches, batch = [], []
    for i in order:  # the first pair of a batch is its longest, so it sets the padded width
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[batch[0]] > BATCH_TOKENS):
            batches.append(batch)
            batch = []
        batch.append(i)
    batches.append(batch)
    scores = [0.0] * len(pairs)
    with torch.inference_mode():
        for idx in batches:
            features = tokenizer.pad([{k: enc[k][i] for k in enc} for i in idx], return_tensors="pt")
            for i, s in zip(idx, model(**features.to(model.device)).logits[:, 0].tolist()):
                scores[i] = float(s)
    return scores


def _has_trained_head(path: str) -> bool:
    """A CrossEncoder needs a sequence-classification head; a bare encoder would get a random one."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return True  # hub id resolved lazily by sentence-transformers; trust the name
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def _is_artifact(model: str) -> bool:
    """An odqa artifact directory (``manifest.json``), as opposed to a model path or id."""
    return (Path(model).expanduser() / "manifest.json").is_file()


@contextlib.contextmanager
def quiet_transformers():
    """No load report or progress bar for the expected fresh head, no deprecation noise from peft."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # peft still calls transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def base_weights(model: torch.nn.Module, fresh: set[str]) -> torch.nn.ParameterDict:
    """The base's pretrained weights (all but the ``fresh``, newly initialised ones), as a module of
    their own that shares the very tensors ``model`` uses, so :class:`FrozenCheck` sees any change
    made to them through the LoRA-wrapped model. Dots become ``/`` (module names cannot hold dots)."""
    return torch.nn.ParameterDict({n.replace(".", "/"): p for n, p in model.named_parameters() if n not in fresh})


def load_base(name: str):
    """``(model, tokenizer, frozen view, fresh parameter names)`` of a base encoder, frozen, in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from odqa.resources import resolve_model

    ref = resolve_model(name)
    with quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(ref.path, num_labels=1,
                                                                         output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
    from odqa.lm.backbone import freeze, resolve_device

    freeze(model.to(resolve_device()))
    fresh = set(info["missing_keys"])
    return model, tokenizer, base_weights(model, fresh), fresh


def read_adapter_artifact(directory: Path, kind: str, label: str, command: str, keys: tuple[str, ...] = ("base_model",)
                          ) -> dict:
    """The manifest of a LoRA adapter artifact (``ADAPTER_FILES`` beside a ``manifest.json`` of
    ``kind`` naming ``keys``), or an error naming what is wrong and the ``command`` that makes one."""
    if not directory.is_dir():
        raise ArtifactMismatchError(f"{label} artifact '{directory}' does not exist; train one with "
                                    f"`{command} --out {directory}`")
    manifest = read_manifest(directory, kind=kind)
    if manifest.get("kind") != kind:
        raise ArtifactMismatchError(f"artifact '{directory}' has no kind '{kind}' in its manifest.json; "
                                    f"pass a directory written by `{command}`")
    missing = [f for f in ADAPTER_FILES if not (directory / f).is_file()]
    if missing or not all(manifest.get(k) for k in keys):
        what = f"is missing {', '.join(missing)}" if missing else f"names no {' or '.join(keys)} in its manifest"
        raise ArtifactMismatchError(f"{label} artifact '{directory}' {what}; re-create it with `{command}`")
    return manifest


_SHARED: dict[str, tuple] = {}  # base name -> (model, weight hash): one per process
_SHARED_LOCK = threading.Lock()


def shared_base(name: str) -> tuple[torch.nn.Module, str]:
    """``(model, weight hash)`` of base encoder ``name``, loaded once per process for every re-ranker
    that names it. Read-only: adapters go on a :func:`~odqa.lm.backbone.shared_copy` of it."""
    from odqa.encoders import share_weights

    with _SHARED_LOCK:
        if name not in _SHARED:
            model, _, frozen, _ = load_base(name)
            # the same checkpoint is usually the dense retriever's encoder too: hold its tensors once
            share_weights(model.base_model, name)
            _SHARED[name] = (model, weights_hash(frozen))
        return _SHARED[name]


def load_reranker(directory: str | Path):
    """Load a re-ranker artifact: ``(model, tokenizer, manifest)``. The adapter stays unmerged, on a
    copy of the process's one base (:func:`shared_base`) that holds the base's very tensors, so every
    re-ranker of one base adds only its adapter and head to memory (the base's files are never
    written)."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from odqa.lm.backbone import shared_copy

    directory = Path(directory).expanduser()
    manifest = read_adapter_artifact(directory, KIND, "re-ranker", "odqa train reranker")
    with safe_open(str(directory / ADAPTER_FILES[0]), "pt") as f:
        if not any(".classifier." in k or k.startswith("classifier.") for k in f.keys()):
            raise PipelineConfigError(f"re-ranker artifact '{directory}' has no trained classification head; "
                                      "re-create it with `odqa train reranker`")
    base, digest = shared_base(manifest["base_model"])
    expected = manifest.get("base_model_hash")
    if expected and digest != expected:
        raise ArtifactMismatchError(
            f"re-ranker artifact '{directory}' was trained on base '{manifest['base_model']}' with weight hash "
            f"{expected[:12]}, but that name now loads other weights ({digest[:12]}); "
            "install the same base model or retrain the re-ranker"
        )
    with quiet_transformers():
        model = PeftModel.from_pretrained(shared_copy(base), str(directory))
        # its own tokenizer: a fast tokenizer is not safe to share between pipelines that run at once
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(manifest["base_model"]).path)
    model.eval()
    return model, tokenizer, manifest


def load_scorer(model: str, batch_size: int = 32, max_length: int = 512) -> Callable[[list[tuple[str, str]]], list[float]]:
    """A function scoring (question, passage) pairs with ``model``: a re-ranker artifact directory
    (``manifest.json``), or a CrossEncoder path or HF id. Refuses an encoder without a trained
    classification head, so nothing ever ranks with random weights."""
    if _is_artifact(model):
        net, tokenizer, _ = load_reranker(model)
        return lambda pairs: score_pairs(net, tokenizer, pairs, batch_size, max_length)
    from sentence_transformers import CrossEncoder

    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path and not Path(model).expanduser().exists():
        raise ResourceNotFoundError(
            f"ranker model '{model}' does not exist; train a re-ranker there with "
            f"`odqa train reranker --out {model}`, or fix the path"
        )
    path = resolve_model(model).path
    if not _has_trained_head(path):
        raise PipelineConfigError(
            f"ranker model '{model}' has no trained classification head; pass a trained "
            "cross-encoder (e.g. one made by `odqa train reranker`), or remove the ranker"
        )
    from odqa.lm.backbone import resolve_device

    cross = CrossEncoder(path, device=str(resolve_device()), max_length=max_length)
    return lambda pairs: cross.predict(pairs, batch_size=batch_size, show_progress_bar=False)
