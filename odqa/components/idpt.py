"""The ID-PT component (paper Section 2): one frozen LM serving every task, each input prefixed by
an input-dependent prompt p(x) that a :class:`~odqa.lm.prompt_generator.PromptGenerator` writes.

``IDPTLM.run(query, task=...)`` renders the task's template (:mod:`odqa.lm.tasks`), writes
p(x), prepends it to the frozen LM's input embeddings and decodes greedily. The same component
evaluates the baselines: its ``artifact`` may be an ID-PT generator, a plain shared soft
prompt, a fine-tuned copy of the backbone, or nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from haystack import component, default_from_dict, default_to_dict
from haystack.dataclasses import GeneratedAnswer

from odqa.components._common import check_question
from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError
from odqa.lm.backbone import freeze
from odqa.lm.prompt_generator import FINETUNED_KIND, KIND, PromptGenerator, load_encoder, truncate_ids


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
        :param task: Default task (``TASK`` or ``TASK/TEMPLATE``, see :mod:`odqa.data.multitask`) when
            ``run`` gets none; ``None`` means the query is already a fully rendered input.
        :param max_new_tokens: Longest answer, in tokens.
        :param max_input_tokens: Longest input read; longer inputs keep their head and tail.
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        """
        if task is not None:
            from odqa.lm.tasks import get_task

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
        from odqa.artifacts import read_manifest

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
        from odqa.lm.tasks import render

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
        from odqa.lm.generation import decode_answer, greedy_generate
        from odqa.lm.prompting import clean_answer

        self.warm_up()
        start = time.perf_counter()
        embeds, prompt_ms = self.input_embeds(text)
        stops = [] if fixed_tokens else self._backbone.stop_token_ids
        new, logp = greedy_generate(self._backbone.model, None, embeds, fixed_tokens or self.max_new_tokens, stops)
        ms = (time.perf_counter() - start) * 1000
        raw, score = decode_answer(self._backbone.tokenizer, new, logp, self._backbone.stop_token_ids)
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
