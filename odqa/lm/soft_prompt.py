"""SoftPrompt: P learned vectors prepended to the frozen LM's input embeddings (Lester et al., 2021).

Saved as an artifact directory: ``soft_prompt.safetensors`` (tensor ``prompt``, shape
``[P, d]``) plus ``manifest.json`` (``kind``, ``backbone``, ``hidden_size``, ...).
A ``.safetensors`` file on its own is accepted too; then only the hidden size is checked.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from odqa.artifacts import check_backbone, read_manifest, write_manifest
from odqa.errors import ArtifactMismatchError, ResourceNotFoundError

WEIGHTS = "soft_prompt.safetensors"


def weights_path(path: str | Path) -> Path:
    """The safetensors file of a soft prompt artifact (a dir, or the file itself); it must exist."""
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.exists():
        raise ResourceNotFoundError(f"soft prompt '{path}' not found (expected a dir with {WEIGHTS} or a .safetensors file)")
    return weights


def soft_prompt_length(path: str | None) -> int:
    """Number of vectors in a soft prompt artifact (0 when there is none), read from its header."""
    if not path:
        return 0
    from safetensors import safe_open

    weights = weights_path(path)
    try:
        with safe_open(str(weights), framework="pt") as fh:
            return int(fh.get_slice("prompt").get_shape()[0])
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ArtifactMismatchError(f"soft prompt '{weights}' is unreadable ({e}); re-create it") from None


class SoftPrompt(nn.Module):
    """P learned vectors in the frozen LM's embedding space, prepended to every input (prompt tuning).

        prompt = SoftPrompt.from_vocab(backbone.model.get_input_embeddings(), torch.arange(20))
        embeds = prompt(backbone.model.get_input_embeddings()(input_ids))   # [batch, 20 + seq, d]
        prompt.save("pipelines/artifacts/NAME", {"backbone": backbone.name})
        SoftPrompt.load("pipelines/artifacts/NAME", backbone.name, backbone.hidden_size)

    Only ``prompt`` is trained; the backbone it feeds stays frozen.
    """

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(embeddings.detach().clone())

    @property
    def length(self) -> int:
        return int(self.prompt.shape[0])

    def digest(self) -> str:
        """A hash of the prompt's values: keeps a prompt re-trained under the same path from
        reusing another's cached keys and values (:mod:`odqa.lm.generation`)."""
        import hashlib

        return hashlib.sha1(self.prompt.detach().float().cpu().numpy().tobytes()).hexdigest()

    def forward(self, input_embeds: torch.Tensor) -> torch.Tensor:
        """Prepend the prompt to ``[batch, seq, d]`` input embeddings."""
        batch = input_embeds.shape[0]
        prompt = self.prompt.to(input_embeds.device, input_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([prompt, input_embeds], dim=1)

    @classmethod
    def from_vocab(cls, embedding: nn.Embedding, token_ids: torch.Tensor) -> "SoftPrompt":
        """Initialise from vocabulary embeddings, as Lester et al. do."""
        return cls(embedding(token_ids))

    def save(self, out_dir: str | Path, manifest: dict) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"prompt": self.prompt.detach().float().cpu().contiguous()}, str(out / WEIGHTS))
        write_manifest(out, {"kind": "soft_prompt", "length": self.length, "hidden_size": int(self.prompt.shape[1]),
                             **manifest})
        return out

    @classmethod
    def load(cls, path: str | Path, backbone_name: str, hidden_size: int) -> "SoftPrompt":
        """Load a soft prompt and check it was made for this backbone (:func:`odqa.artifacts.check_backbone`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        weights = weights_path(path)
        manifest = read_manifest(weights.parent)
        manifest.pop("hidden_size", None)  # the tensor's own shape is checked below, against [P, d]
        check_backbone(manifest, f"soft prompt '{path}'", backbone_name, hidden_size)
        try:
            tensor = load_file(str(weights))["prompt"]
        except (SafetensorError, KeyError, OSError) as e:
            raise ArtifactMismatchError(f"soft prompt '{weights}' is unreadable ({e}); re-create it") from None
        if tensor.ndim != 2 or tensor.shape[1] != hidden_size:
            raise ArtifactMismatchError(
                f"soft prompt '{path}' has shape {tuple(tensor.shape)}, but backbone '{backbone_name}' "
                f"needs [P, {hidden_size}]; it was made for another model"
            )
        return cls(tensor)
