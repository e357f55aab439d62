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

:class:`IDPTLM` is the Haystack component: ``run(query, task=...)`` renders the task's template
(:mod:`odqa.training.multitask`), writes p(x), prepends it to the frozen LM's input embeddings
and decodes greedily. The same component evaluates the baselines: its ``artifact`` may be an
ID-PT generator, a plain shared soft prompt, a fine-tuned copy of the backbone, or nothing.

Artifact: ``prompt_generator.safetensors`` (only the trained parts, never the frozen encoder)
+ ``manifest.json`` (kind ``idpt_generator``; backbone and encoder ids and weight hashes,
hidden sizes, P and Q, the command, the data, dev metrics).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import torch
from haystack import component, default_from_dict, default_to_dict
from haystack.dataclasses import GeneratedAnswer
from torch import nn

from odqa.components._common import check_question
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
        model = cls.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        _ENCODERS[key] = (freeze(model.to(where)), tokenizer)
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

        from odqa.training.artifacts import write_manifest

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

        from odqa.training.artifacts import check_backbone, read_manifest
        from odqa.training.frozen import weights_hash

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


# --- the Haystack component ----------------------------------------------------------------------
def truncate_ids(ids: list[int], limit: int, head: int = 24) -> list[int]:
    """Keep the first ``head`` and the last ``limit - head`` ids: the instruction and the answer cue."""
    return ids if len(ids) <= limit else ids[:head] + ids[len(ids) - (limit - head):]


@component
class IDPTLM:
    """A frozen LM reading a task input, prefixed by an input-dependent prompt p(x) (ID-PT).

    ``artifact`` picks the system; the same component runs all of them, so they are
    compared on equal terms:

    - an ``idpt_generator`` artifact: a :class:`PromptGenerator` writes p(x) for each input;
    - a ``soft_prompt`` artifact: one shared learned prompt (plain prompt tuning);
    - a ``finetuned_lm`` artifact: a fine-tuned copy of the backbone, read without any prompt;
    - ``None``: the frozen backbone alone (zero-shot).

    Usage:
        >>> lm = IDPTLM(artifact="pipelines/artifacts/idpt-smollm2-multitask")
        >>> lm.run(query="Alpacas are domesticated camelids ...", task="topic")["answers"][0].data
    """

    def __init__(self, model: str = "smollm2-135m-instruct", artifact: str | None = None, task: str | None = None,
                 max_new_tokens: int = 16, max_input_tokens: int = 128, dtype: str = "float32"):
        """
        :param model: The frozen backbone: a bundled name, local path or HF id.
        :param artifact: An ``idpt_generator``, ``soft_prompt`` or ``finetuned_lm`` artifact dir, or ``None``.
        :param task: Default task (``TASK`` or ``TASK/TEMPLATE``, see :mod:`odqa.training.multitask`) when
            ``run`` gets none; ``None`` means the query is already a fully rendered input.
        :param max_new_tokens: Longest answer, in tokens.
        :param max_input_tokens: Longest input read; longer inputs keep their head and tail.
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        """
        if task is not None:
            from odqa.training.multitask import get_task

            get_task(task.split("/", 1)[0])
        if max_new_tokens < 1 or max_input_tokens < 32:
            raise PipelineConfigError(f"max_new_tokens must be >= 1 and max_input_tokens >= 32, got "
                                      f"{max_new_tokens} and {max_input_tokens}")
        self.model = model
        self.artifact = artifact
        self.task = task
        self.max_new_tokens = max_new_tokens
        self.max_input_tokens = max_input_tokens
        self.dtype = dtype
        self._backbone = None
        self._generator: PromptGenerator | None = None
        self._soft = None
        self._enc_tok = None
        self.kind: str | None = None

    def warm_up(self) -> None:
        if self._backbone is not None:
            return
        from odqa.lm.backbone import load_backbone
        from odqa.training.artifacts import read_manifest

        if not self.artifact:
            self.kind, self._backbone = "frozen", load_backbone(self.model, self.dtype)
            return
        path = Path(self.artifact)
        if not path.is_dir():
            raise ResourceNotFoundError(f"artifact '{path}' does not exist; pass an ID-PT generator, soft prompt "
                                        "or fine-tuned model directory (see `odqa train idpt`)")
        kind = read_manifest(path).get("kind")
        if kind == FINETUNED_KIND:
            base = read_manifest(path)["backbone"]
            if base != self.model:
                raise ArtifactMismatchError(f"fine-tuned model '{path}' was made from '{base}', but this component's "
                                            f"model is '{self.model}'; set model to '{base}'")
            self._backbone = load_backbone(str(path), self.dtype)
        elif kind == KIND:
            backbone = load_backbone(self.model, self.dtype)
            self._generator = freeze(PromptGenerator.load(path, self.model, backbone.hidden_size))
            self._enc_tok = load_encoder(read_manifest(path)["encoder"])[1]
            self._backbone = backbone
        elif kind == "soft_prompt":
            backbone = load_backbone(self.model, self.dtype)
            self._soft = backbone.soft_prompt(path)
            self._backbone = backbone
        else:
            raise ArtifactMismatchError(f"artifact '{path}' is a '{kind}'; IDPTLM takes an '{KIND}', 'soft_prompt' "
                                        f"or '{FINETUNED_KIND}' artifact")
        self.kind = kind

    @property
    def prompt_length(self) -> int:
        self.warm_up()
        if self._generator is not None:
            return self._generator.length
        return self._soft.length if self._soft is not None else 0

    def render(self, query: str, task: str | None) -> tuple[str, str]:
        """``(template name, LM input)``: the query under the task's template, or as given when no task."""
        task = task or self.task
        if task is None:
            return "", query
        from odqa.training.multitask import render

        return render(task, query)

    def input_embeds(self, text: str) -> tuple[torch.Tensor, float]:
        """``[1, P + n, d]`` input embeddings of a rendered input (prompt first), and the ms spent writing p(x)."""
        tok, model = self._backbone.tokenizer, self._backbone.model
        ids = torch.tensor([truncate_ids(tok(text)["input_ids"], self.max_input_tokens)], device=self._backbone.device)
        embeds = model.get_input_embeddings()(ids)
        start = time.perf_counter()
        if self._generator is not None:
            enc = self._generator.tokenize(self._enc_tok, [text])
            embeds = torch.cat([self._generator(enc["input_ids"], enc["attention_mask"]).to(embeds.dtype), embeds], 1)
        elif self._soft is not None:
            embeds = self._soft(embeds)
        return embeds, (time.perf_counter() - start) * 1000

    @torch.inference_mode()
    def generate(self, text: str, fixed_tokens: int | None = None) -> dict[str, Any]:
        """Greedy answer to a rendered input: ``{"text", "raw", "score", "new_tokens", "prompt_ms", "ms"}``.

        ``fixed_tokens`` decodes exactly that many tokens, ignoring stop tokens (for timing)."""
        from odqa.lm.generation import greedy_generate
        from odqa.lm.prompting import clean_answer

        self.warm_up()
        start = time.perf_counter()
        embeds, prompt_ms = self.input_embeds(text)
        stops = [] if fixed_tokens else self._backbone.stop_token_ids
        new, logp = greedy_generate(self._backbone.model, None, embeds, fixed_tokens or self.max_new_tokens, stops)
        ms = (time.perf_counter() - start) * 1000
        tok = self._backbone.tokenizer
        stop_set = set(self._backbone.stop_token_ids)
        raw = tok.decode([t for t in new if t not in stop_set], skip_special_tokens=True)
        score = float(torch.exp(torch.tensor(logp).mean())) if logp else 0.0
        return {"text": clean_answer(raw), "raw": raw, "score": score, "new_tokens": len(new),
                "input_tokens": int(embeds.shape[1]), "prompt_ms": prompt_ms, "ms": ms}

    @component.output_types(answers=list[GeneratedAnswer])
    def run(self, query: str, task: str | None = None) -> dict[str, Any]:
        """
        :param query: The input text: a paragraph or a question (or, with no task, a fully rendered prompt).
        :param task: ``TASK`` or ``TASK/TEMPLATE`` of the bundled mixture; overrides the init ``task``.
        :returns: ``answers``: one :class:`GeneratedAnswer`; ``meta`` holds ``score``, ``task``,
            ``template``, ``input_tokens``, ``new_tokens`` and ``prompt_ms`` (time spent writing p(x)).
        """
        query = check_question(query)
        self.warm_up()
        template, text = self.render(query, task)
        out = self.generate(text)
        meta = {"score": out["score"], "raw": out["raw"], "task": task or self.task, "template": template,
                "system": self.kind, "input_tokens": out["input_tokens"], "new_tokens": out["new_tokens"],
                "prompt_ms": round(out["prompt_ms"], 2)}
        return {"answers": [GeneratedAnswer(data=out["text"], query=query, documents=[], meta=meta)]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, model=self.model, artifact=self.artifact, task=self.task,
                               max_new_tokens=self.max_new_tokens, max_input_tokens=self.max_input_tokens,
                               dtype=self.dtype)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IDPTLM":
        return default_from_dict(cls, data)
