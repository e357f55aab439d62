"""The recursion connector (paper, Section 4): LM -> Connector -> LM.

Pass 1's final hidden states go through a small trained :class:`Connector` into pass 2's input
embeddings, ``[soft prompt 2 ; connector(h1) ; question]``; :func:`first_pass_states` and
:func:`second_pass_inputs` are the two ends, shared by the reader
(:class:`odqa.components.recursion.NeuralRecursionReader`) and the trainer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError

CONNECTOR = "connector.safetensors"


class Connector(nn.Module):
    """Maps the frozen LM's final hidden states ``[..., d]`` to input embeddings ``[..., d]``.

    ``connector(h) = scale * h / rms(h) + up(gelu(down(h / rms(h))))``: a bottleneck MLP (d -> r -> d)
    beside a learned-scale identity path. At initialisation ``scale`` and ``up.weight`` are zero
    and ``up.bias`` is the input embedding of the newline token (:meth:`for_backbone`), so the
    connector writes one blank line per position: pass 2 starts as a one-pass reader with a few
    blank lines before the question, and training grows the signal from there (``up``'s gradient
    is not zero: ``down`` is random). Two starts we measured and dropped, on SmolLM2: the identity
    rescaled to the embeddings' RMS (with tied embeddings a final state points at the next token's
    embedding) made the language-modelling loss *worse* than no context (8.5 against 4.0 nats on
    held-out windows; a few outlier dimensions dominate the normalised states); exact zeros read
    fine (3.9) but gave NaN gradients, since every layer's RMSNorm sits at its singular point
    for an all-zero position. At d=576, r=128 it has 148k parameters (0.6 MB in fp32).

    Usage:
        >>> connector = Connector(hidden_size=576, bottleneck=128)
        >>> connector(torch.randn(2, 7, 576)).shape
        torch.Size([2, 7, 576])
    """

    def __init__(self, hidden_size: int, bottleneck: int = 128, scale: float = 0.0, blank: torch.Tensor | None = None):
        super().__init__()
        if hidden_size < 1 or bottleneck < 1:
            raise PipelineConfigError(f"connector sizes must be positive, got hidden_size={hidden_size}, "
                                      f"bottleneck={bottleneck}")
        self.hidden_size = hidden_size
        self.bottleneck = bottleneck
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        with torch.no_grad():
            self.up.bias.copy_(blank if blank is not None else torch.zeros(hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != self.hidden_size:
            raise PipelineConfigError(f"the connector takes [..., {self.hidden_size}] hidden states, got "
                                      f"{tuple(hidden.shape)}; it was made for another model")
        x = hidden.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        out = self.scale * x + self.up(nn.functional.gelu(self.down(x)))
        return out.to(hidden.dtype)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def for_backbone(cls, model, tokenizer, bottleneck: int = 128) -> "Connector":
        """A fresh connector for ``model`` that starts by writing the newline token's input embedding
        (through the embedding layer, so Gemma's sqrt(d) scaling is included) at every position."""
        ids = tokenizer.encode("\n", add_special_tokens=False) or [tokenizer.eos_token_id]
        embedding = model.get_input_embeddings()
        with torch.no_grad():
            blank = embedding(torch.tensor([ids[-1]], device=embedding.weight.device))[0].float()
        return cls(int(embedding.weight.shape[1]), bottleneck, blank=blank).to(embedding.weight.device)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / CONNECTOR
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))
        return path

    @classmethod
    def load(cls, directory: str | Path, backbone_name: str | None = None, hidden_size: int | None = None) -> "Connector":
        """Load ``connector.safetensors`` from an artifact dir, checking the backbone and hidden size."""
        from safetensors.torch import load_file

        from odqa.artifacts import check_backbone, read_manifest

        path = Path(directory) / CONNECTOR
        if not path.exists():
            raise ResourceNotFoundError(f"connector '{directory}' not found (expected a dir with {CONNECTOR}); "
                                        "train one with `odqa train recursive --mode neural`")
        manifest = read_manifest(directory)
        try:
            state = load_file(str(path))
            d, r = (int(x) for x in state["down.weight"].shape[::-1])
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise ArtifactMismatchError(f"connector '{path}' is unreadable ({e}); re-create it") from None
        if backbone_name is not None:
            check_backbone(manifest, f"connector '{directory}'", backbone_name, hidden_size or d)
        if hidden_size is not None and d != hidden_size:
            raise ArtifactMismatchError(f"connector '{directory}' maps {d}-dim states, but the backbone has "
                                        f"hidden size {hidden_size}; it was made for another model")
        connector = cls(d, r)
        connector.load_state_dict(state)
        return connector


def embed_ids(model, ids: list[int]) -> torch.Tensor:
    """The input embeddings ``[len(ids), d]`` of token ids, through the model's own embedding layer."""
    embedding = model.get_input_embeddings()
    return embedding(torch.tensor([ids], dtype=torch.long, device=embedding.weight.device))[0]


@torch.no_grad()
def first_pass_states(model, soft, prefix_ids: list[int], body_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """Final hidden states (after the last norm) of pass 1 over ``[soft ; prefix ; body ; answer]``,
    at the body's and the answer's positions: ``[len(body) + len(answer), d]``."""
    embeds = embed_ids(model, list(prefix_ids) + list(body_ids) + list(answer_ids)).unsqueeze(0)
    if soft is not None:
        embeds = soft(embeds)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[0]
    return hidden[hidden.shape[0] - len(body_ids) - len(answer_ids):]


def second_pass_inputs(model, connector: Connector, states: torch.Tensor, body_ids: list[int]) -> torch.Tensor:
    """Pass 2's input after its soft prompt and prefix: ``[connector(h1) ; embed(body)]``, ``[m + n, d]``."""
    return torch.cat([connector(states), embed_ids(model, body_ids)], dim=0)
