"""Query-side fine-tuning (Atlas, Izacard et al. 2022, Section 2.4): the dense retriever's question
encoder, adapted (a LoRA adapter) while the passages keep the vectors already in the index, so a
re-ranker built on it costs one question embedding and never re-embeds or re-indexes a passage.

A candidate's score is ``scale * cos(E'(question), E(passage))``: ``E`` is the index's frozen
sentence-transformers encoder, ``E'`` the same encoder with the adapter, ``scale`` a learned
inverse temperature. With the adapter at zero (its initial state) the scores order candidates
exactly as the dense retriever does, so training starts from a working ranker.

    encoder, manifest = load_query_encoder("pipelines/artifacts/query-encoder-minilm-answer")
    encoder.scores(["Who wrote Hamlet?"], torch.tensor(passage_vectors)[None])   # -> [[...]]
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from odqa.errors import ArtifactMismatchError, PipelineConfigError
from odqa.lm.backbone import weights_hash

KIND = "query_encoder"
INITIAL_SCALE = 20.0  # sentence-transformers' scale for cosine similarities in a softmax loss


class QueryEncoder(torch.nn.Module):
    """A sentence-transformers encoder's question side with a learned score scale.

    :param name: The encoder (bundled name, path or HF id): the index's own, so a question
        lands in the space of the index's passage vectors.
    :param share: Hold the tensors of the retriever's cached encoder (``load_encoder(name)``)
        instead of loading a copy: for inference, where an unmerged adapter wraps the layers.
    """

    def __init__(self, name: str, share: bool = False):
        super().__init__()
        from odqa.encoders import SentenceTransformerEncoder, load_encoder
        from odqa.lm.backbone import shared_copy

        self.name = name
        if share:  # modules of its own over the retriever's very tensors (one copy in memory); never trained
            loaded = load_encoder(name)
            if not isinstance(loaded, SentenceTransformerEncoder):
                raise PipelineConfigError(f"'{name}' is a DPR encoder; a query encoder adapts a "
                                          "sentence-transformers encoder (the dense index's own, e.g. minilm-l6)")
            self.st = shared_copy(loaded.model)
        else:  # a copy of its own, for training: the retriever's stays untouched whatever is done to it
            self.st = SentenceTransformerEncoder(name).model
        self.st.requires_grad_(False)
        self.st.eval()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))

    @property
    def transformer(self) -> torch.nn.Module:
        """The encoder's transformer (where the adapter goes)."""
        from odqa.encoders import transformer_slot

        return getattr(self.st[0], transformer_slot(self.st))

    def set_transformer(self, module: torch.nn.Module) -> None:
        """Put ``module`` (the transformer wrapped with an adapter) in the encoder's place. A method,
        not a property setter: ``nn.Module`` would register an assigned module under its own name."""
        from odqa.encoders import transformer_slot

        setattr(self.st[0], transformer_slot(self.st), module)

    def embed(self, questions: list[str]) -> torch.Tensor:
        """Unit-length question embeddings, ``[len(questions), dim]`` (differentiable)."""
        prep = getattr(self.st, "preprocess", None) or self.st.tokenize
        features = {k: v.to(self.log_scale.device) if torch.is_tensor(v) else v for k, v in prep(questions).items()}
        return torch.nn.functional.normalize(self.st(features)["sentence_embedding"], dim=-1)

    def scores(self, questions: list[str], vectors: torch.Tensor) -> torch.Tensor:
        """``[questions, candidates]`` scores of each question against its own candidates'
        passage vectors (``vectors``: ``[questions, candidates, dim]``, as stored in the index)."""
        q = self.embed(questions)
        return self.log_scale.exp() * torch.einsum("bkd,bd->bk", vectors.to(q), q)


def check_index(index, encoder: str) -> None:
    """Refuse a dense index whose passage vectors are not ``encoder``'s (a sentence-transformers
    encoder: the question side a query encoder adapts must embed into the same space)."""
    from odqa.encoders import load_encoder

    if index.manifest.get("encoder_kind") == "dpr":
        raise PipelineConfigError(f"index '{index.path}' holds DPR vectors; a query encoder adapts a "
                                  f"sentence-transformers encoder ('{encoder}'): use an index built with one")
    index.check_encoder(load_encoder(encoder))


def base_hash(encoder: QueryEncoder) -> str:
    """The weight hash of the frozen encoder under the adapter (what training must leave unchanged;
    the trainer's FrozenCheck hashes the same :func:`~odqa.lm.cross_encoder.base_weights` view)."""
    from odqa.lm.cross_encoder import base_weights

    return weights_hash(base_weights(encoder.transformer, set()))


def load_query_encoder(directory: str | Path) -> tuple[QueryEncoder, dict]:
    """Load a query-encoder artifact (made by ``odqa train reranker --student query-encoder``):
    the adapter, unmerged, on a copy of the base encoder that shares its tensors (see
    :class:`QueryEncoder`), and the manifest."""
    from peft import PeftModel

    from odqa.lm.cross_encoder import quiet_transformers, read_adapter_artifact

    directory = Path(directory).expanduser()
    manifest = read_adapter_artifact(directory, KIND, "query-encoder", "odqa train reranker --student query-encoder",
                                     keys=("base_model", "scale"))
    encoder = QueryEncoder(manifest["base_model"], share=True)
    expected = manifest.get("base_model_hash")
    if expected and base_hash(encoder) != expected:
        raise ArtifactMismatchError(
            f"query-encoder artifact '{directory}' was trained on encoder '{manifest['base_model']}' with weight "
            f"hash {expected[:12]}, but that name now loads other weights ({base_hash(encoder)[:12]}); install "
            "the same encoder or retrain")
    with quiet_transformers():
        # never merged: merging would write the adapter into the tensors the retriever shares
        encoder.set_transformer(PeftModel.from_pretrained(encoder.transformer, str(directory)))
    with torch.no_grad():
        encoder.log_scale.fill_(math.log(manifest["scale"]))
    encoder.requires_grad_(False)
    encoder.eval()
    return encoder, manifest
