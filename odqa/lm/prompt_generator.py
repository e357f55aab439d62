"""Input-dependent prompt tuning (ID-PT, paper Section 2): a small generator writes a soft prompt
for each input, and one frozen LM serves every task.

:class:`PromptGenerator` has the paper's three parts:

1. a **frozen encoder** (``T5EncoderModel`` for a T5 model, any HF encoder through ``AutoModel``
   otherwise; the bundled MiniLM by default), loaded by :func:`load_encoder`;
2. a **learned encoder prompt** of Q vectors prepended to the encoder's input embeddings
   (prompt tuning of the encoder);
3. a **learned cross-attention network**: P learned queries attend over the encoder's output
   (padding masked out, so padding never changes the result) and are projected to the LM's
   embedding size, giving the fixed-length prompt p(x) of P vectors.

The projection adds a learned per-position bias, initialised from the LM's vocabulary
embeddings as a plain soft prompt is, and the projection weight starts at zero: before
training p(x) is exactly the plain prompt-tuning baseline's initial prompt, and training
adds the input-dependent part.

The Haystack component that runs it is :class:`odqa.components.idpt.IDPTLM`.

Artifact: ``prompt_generator.safetensors`` (only the trained parts, never the frozen encoder)
+ ``manifest.json`` (kind ``idpt_generator``; backbone and encoder ids and weight hashes,
hidden sizes, P and Q, the command, the data, dev metrics).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import torch
from torch import nn

from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError
from odqa.lm.backbone import freeze

WEIGHTS = "prompt_generator.safetensors"
KIND = "idpt_generator"
FINETUNED_KIND = "finetuned_lm"
T5_TYPES = {"t5", "mt5", "umt5", "longt5"}
MAX_ENCODER_TOKENS = 128

_ENCODERS: dict[tuple[str, str], tuple[nn.Module, object]] = {}
_LOCK = threading.Lock()


# --- the frozen encoder ------------------------------------------------------------------------
def load_encoder(name: str, device: str | torch.device | None = None) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` of a frozen encoder: ``T5EncoderModel`` for a T5 config, ``AutoModel``
    otherwise. Bundled names (``minilm-l6``), local paths and HF ids; on ``device`` (default
    ``$ODQA_DEVICE``, as the backbone); cached per process."""
    from odqa.lm.backbone import resolve_device

    where = resolve_device(device)
    key = (name, str(where))
    with _LOCK:
        if key in _ENCODERS:
            return _ENCODERS[key]
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        from odqa.resources import model_dir

        path = model_dir(name)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ResourceNotFoundError(f"encoder '{name}' has no readable config ({str(e).splitlines()[0]}); "
                                        "pass an HF encoder (id or directory)") from None
        if any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or []):
            raise PipelineConfigError(f"'{name}' is a decoder ({config.model_type}); the prompt generator needs an "
                                      "encoder such as minilm-l6 or a T5 model")
        cls = T5EncoderModel if config.model_type in T5_TYPES else AutoModel
        model = freeze(cls.from_pretrained(path).to(where))
        tokenizer = AutoTokenizer.from_pretrained(path)
        if cls is AutoModel and where.type == "cpu":
            from odqa.encoders import share_weights

            share_weights(model, name)  # a sentence encoder such as minilm-l6: the dense retriever's tensors, once
        _ENCODERS[key] = (model, tokenizer)
        return _ENCODERS[key]


def encoder_hidden_size(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


# --- the generator -----------------------------------------------------------------------------
class PromptGenerator(nn.Module):
    """Writes a soft prompt p(x) of ``prompt_length`` LM-embedding vectors for each input.

    Usage:
        >>> encoder, enc_tok = load_encoder("minilm-l6")
        >>> gen = PromptGenerator(encoder, lm_hidden=576, prompt_length=20)
        >>> batch = enc_tok(["Question: Who wrote Hamlet?\\nAnswer:"], return_tensors="pt", padding=True)
        >>> gen(batch["input_ids"], batch["attention_mask"]).shape   # [1, 20, 576]
    """

    def __init__(self, encoder: nn.Module, lm_hidden: int, prompt_length: int = 20, encoder_prompt_length: int = 8,
                 attn_dim: int = 128, heads: int = 4, init_prompt: torch.Tensor | None = None):
        """
        :param encoder: The frozen encoder (not registered as a submodule: it is never saved or trained).
        :param lm_hidden: The LM's embedding size.
        :param prompt_length: P, the number of vectors in p(x).
        :param encoder_prompt_length: Q, the learned prompt vectors prepended to the encoder's input.
        :param attn_dim: Width of the cross-attention (queries, keys, values).
        :param heads: Attention heads (``attn_dim`` must divide by it).
        :param init_prompt: ``[P, lm_hidden]`` initial bias of the output (vocabulary embeddings); zeros if None.
        """
        super().__init__()
        if attn_dim % heads:
            raise PipelineConfigError(f"attn_dim {attn_dim} is not divisible by heads {heads}")
        if prompt_length < 1 or encoder_prompt_length < 0:
            raise PipelineConfigError(f"prompt_length must be >= 1 and encoder_prompt_length >= 0, got "
                                      f"{prompt_length} and {encoder_prompt_length}")
        self._frozen = (encoder,)  # a tuple keeps it out of parameters() and state_dict()
        d_enc = encoder_hidden_size(encoder)
        self.config = dict(lm_hidden=int(lm_hidden), encoder_hidden=d_enc, prompt_length=int(prompt_length),
                           encoder_prompt_length=int(encoder_prompt_length), attn_dim=int(attn_dim), heads=int(heads))
        emb = encoder.get_input_embeddings().weight
        g = torch.Generator().manual_seed(0)
        # part 2: prompt tuning of the encoder, initialised from random vocabulary rows (Lester et al.)
        rows = torch.randint(0, emb.shape[0], (encoder_prompt_length,), generator=g)
        self.encoder_prompt = nn.Parameter(emb.detach()[rows].clone().float())
        # part 3: P learned queries cross-attend over the encoder output, then a projection to the LM
        self.queries = nn.Parameter(torch.randn(prompt_length, attn_dim, generator=g) / math.sqrt(attn_dim))
        self.key = nn.Linear(d_enc, attn_dim)
        self.value = nn.Linear(d_enc, attn_dim)
        self.norm = nn.LayerNorm(attn_dim)
        self.out = nn.Linear(attn_dim, lm_hidden, bias=False)
        nn.init.zeros_(self.out.weight)  # p(x) starts as the plain prompt below
        bias = (init_prompt.detach().float().clone() if init_prompt is not None
                else torch.zeros(prompt_length, lm_hidden))
        if tuple(bias.shape) != (prompt_length, lm_hidden):
            raise PipelineConfigError(f"init_prompt has shape {tuple(bias.shape)}, "
                                      f"expected ({prompt_length}, {lm_hidden})")
        self.prompt_bias = nn.Parameter(bias)
        self.to(emb.device)  # the generator lives where its frozen encoder does

    @property
    def encoder(self) -> nn.Module:
        return self._frozen[0]

    @property
    def length(self) -> int:
        return self.config["prompt_length"]

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (the frozen encoder is not counted)."""
        parts = {
            "encoder_prompt": self.encoder_prompt.numel(),
            "cross_attention": self.queries.numel() + sum(p.numel() for m in (self.key, self.value, self.norm)
                                                          for p in m.parameters()),
            "projection": self.out.weight.numel() + self.prompt_bias.numel(),
        }
        parts["total"] = sum(parts.values())
        return parts

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's output over ``[encoder prompt ; input]`` and its mask."""
        embed = self.encoder.get_input_embeddings()
        tokens = embed(input_ids)
        batch = input_ids.shape[0]
        prompt = self.encoder_prompt.to(tokens.dtype).unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([prompt, tokens], dim=1)
        mask = torch.cat([torch.ones(batch, prompt.shape[1], dtype=attention_mask.dtype,
                                     device=attention_mask.device), attention_mask], dim=1)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """p(x): ``[batch, P, lm_hidden]`` from encoder token ids ``[batch, n]`` (right padding)."""
        hidden, mask = self.encode(input_ids, attention_mask)
        h, a = self.config["heads"], self.config["attn_dim"]
        batch, n, _ = hidden.shape
        k = self.key(hidden).view(batch, n, h, a // h).transpose(1, 2)  # [b, h, n, a/h]
        v = self.value(hidden).view(batch, n, h, a // h).transpose(1, 2)
        q = self.queries.view(1, -1, h, a // h).transpose(1, 2)  # [1, h, P, a/h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(a // h)  # [b, h, P, n]
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))  # padding never attended
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, -1, a)  # [b, P, a]
        return self.prompt_bias.unsqueeze(0) + self.out(self.norm(attended))

    def tokenize(self, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
        """Encoder inputs for ``texts``: right padding, truncated to what the encoder reads."""
        limit = MAX_ENCODER_TOKENS - self.config["encoder_prompt_length"]
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
        return enc.to(self.prompt_bias.device)

    # --- artifact ------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, manifest: dict) -> Path:
        from safetensors.torch import save_file

        from odqa.artifacts import write_manifest

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(out / WEIGHTS))
        write_manifest(out, {**manifest, "kind": KIND, "hidden_size": self.config["lm_hidden"], **self.config,
                             "trainable_params": self.parameter_counts()})
        return out

    @classmethod
    def load(cls, path: str | Path, backbone_name: str, hidden_size: int,
             check_encoder: bool = True) -> "PromptGenerator":
        """Load a generator artifact; refuses one made for another backbone, hidden size or encoder."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from odqa.artifacts import check_backbone, read_manifest
        from odqa.lm.backbone import weights_hash

        path = Path(path)
        if not (path / WEIGHTS).exists():
            raise ResourceNotFoundError(f"prompt generator '{path}' not found (expected a dir with {WEIGHTS}); "
                                        "train one with `odqa train idpt --mode idpt`")
        manifest = read_manifest(path, KIND)
        if not manifest:
            raise ArtifactMismatchError(f"prompt generator '{path}' has no manifest.json; re-create it")
        check_backbone(manifest, f"prompt generator '{path}'", backbone_name, hidden_size)
        encoder, _ = load_encoder(manifest["encoder"])
        if encoder_hidden_size(encoder) != manifest["encoder_hidden"]:
            raise ArtifactMismatchError(f"prompt generator '{path}' was made for an encoder of size "
                                        f"{manifest['encoder_hidden']}, but '{manifest['encoder']}' has "
                                        f"{encoder_hidden_size(encoder)}")
        if check_encoder and manifest.get("encoder_hash") and weights_hash(encoder) != manifest["encoder_hash"]:
            raise ArtifactMismatchError(f"encoder '{manifest['encoder']}' has other weights than the ones prompt "
                                        f"generator '{path}' was trained with; point it at the same encoder")
        gen = cls(encoder, manifest["lm_hidden"], manifest["prompt_length"], manifest["encoder_prompt_length"],
                  manifest["attn_dim"], manifest["heads"])
        try:
            gen.load_state_dict(load_file(str(path / WEIGHTS)))
        except (SafetensorError, RuntimeError, OSError) as e:
            raise ArtifactMismatchError(f"prompt generator '{path}' is unreadable or has other shapes "
                                        f"({str(e).splitlines()[0]}); re-create it") from None
        return gen


def truncate_ids(ids: list[int], limit: int, head: int = 24) -> list[int]:
    """Keep the first ``head`` and the last ``limit - head`` ids: the instruction and the answer cue."""
    return ids if len(ids) <= limit else ids[:head] + ids[len(ids) - (limit - head):]
