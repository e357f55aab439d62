"""Proof that training never writes the backbone: hash its weights before and after.

    with FrozenCheck(model, "smollm2-135m-instruct") as check:
        train(...)
    check.digest  # the hash, identical before and after, recorded in the artifact manifest
"""

from __future__ import annotations

import torch

from odqa.errors import BackboneChangedError
from odqa.lm.backbone import weights_hash


class FrozenCheck:
    """Context manager: hashes ``model`` on entry and exit and raises if the weights changed.

    It also checks that no parameter requires grad on entry, so a trainer cannot
    hand the backbone's weights to an optimizer by mistake.
    """

    def __init__(self, model: torch.nn.Module, name: str):
        self.model = model
        self.name = name
        self.digest: str | None = None

    def __enter__(self) -> "FrozenCheck":
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if trainable:
            raise BackboneChangedError(
                f"backbone '{self.name}' has {len(trainable)} trainable parameters (e.g. '{trainable[0]}'); "
                "load it with odqa.lm.backbone.load_backbone, which freezes it"
            )
        self.digest = weights_hash(self.model)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        after = weights_hash(self.model)
        if after != self.digest:
            raise BackboneChangedError(
                f"backbone '{self.name}' weights changed during training (hash {self.digest[:12]} -> "
                f"{after[:12]}); the trained artifact is discarded. Report this as a bug."
            )
