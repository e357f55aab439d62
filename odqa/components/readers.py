"""FrozenLMReader: a frozen causal LM, optionally prompt-tuned, answers from the packed passages."""

from __future__ import annotations

from typing import Any

import torch
from haystack import Document, component, default_from_dict, default_to_dict
from haystack.dataclasses import GeneratedAnswer

from odqa.components._common import check_question
from odqa.components.packing import reader_budget
from odqa.errors import PipelineConfigError
from odqa.lm.prompting import clean_answer, encode, get_template


@component
class FrozenLMReader:
    """Reads the question and passages with a frozen LM and writes a short answer.

    The backbone is loaded once per process and shared (``requires_grad=False``,
    eval mode). An optional soft prompt (Lester et al., 2021) is prepended to the
    input embeddings. Decoding is greedy (``num_beams=1``) or beam search. The
    reader never truncates: a prompt over ``context_length`` is an error, so put a
    :class:`~odqa.components.packing.ContextPacker` with the same settings before it.

    Usage:
        >>> reader = FrozenLMReader(model="smollm2-135m-instruct")
        >>> reader.run(query="Who wrote Hamlet?", documents=packed)["answers"][0].data
    """

    def __init__(self, model: str = "smollm2-135m-instruct", template: str = "qa-completion",
                 soft_prompt: str | None = None, context_length: int = 384, max_new_tokens: int = 16,
                 num_beams: int = 1, dtype: str = "float32"):
        """
        :param model: Backbone: a bundled name, local path or HF id.
        :param template: Prompt template (see :mod:`odqa.lm.prompting`).
        :param soft_prompt: Soft prompt artifact (dir with ``soft_prompt.safetensors``), or ``None``.
        :param context_length: Context window used, in tokens (prompt + soft prompt + answer).
        :param max_new_tokens: Longest answer, in tokens.
        :param num_beams: 1 for greedy decoding, more for beam search.
        :param dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
        """
        get_template(template)
        if num_beams < 1:
            raise PipelineConfigError(f"num_beams must be at least 1, got {num_beams}")
        self.model = model
        self.template = template
        self.soft_prompt = soft_prompt
        self.context_length = context_length
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.dtype = dtype
        self._backbone = None
        self._soft = None

    def warm_up(self) -> None:
        if self._backbone is not None:
            return
        from odqa.lm.backbone import load_backbone
        from odqa.lm.soft_prompt import SoftPrompt

        backbone = load_backbone(self.model, self.dtype)
        if self.soft_prompt:
            self._soft = SoftPrompt.load(self.soft_prompt, self.model, backbone.hidden_size).eval()
            self._soft.requires_grad_(False)
        self._backbone = backbone

    @component.output_types(answers=list[GeneratedAnswer])
    def run(self, query: str, documents: list[Document] | None = None) -> dict[str, Any]:
        """
        :param query: The question.
        :param documents: Packed passages, best first.
        :returns: ``answers``: one :class:`GeneratedAnswer` whose ``meta`` holds ``score`` (the
            geometric-mean token probability), ``prompt_tokens`` and ``new_tokens``.
        """
        query = check_question(query)
        documents = documents or []
        self.warm_up()
        tok, model = self._backbone.tokenizer, self._backbone.model
        template = get_template(self.template)
        soft_len = self._soft.length if self._soft is not None else 0
        passages = [(d.meta.get("title", ""), d.content) for d in documents]
        ids = encode(tok, template, template.render(tok, query, passages))
        limit = self.context_length - self.max_new_tokens - soft_len
        if len(ids) > limit:
            # only now is it worth rendering the bare prompt: raises if the question alone is too long
            reader_budget(tok, self.template, query, self.context_length, self.max_new_tokens, soft_len)
            raise PipelineConfigError(
                f"the reader's prompt is {len(ids)} tokens, over its limit of {limit}; put a ContextPacker "
                "with the same model, template, context_length and max_new_tokens before the reader"
            )
        text, score, n_new = self._generate(torch.tensor([ids]))
        answer = GeneratedAnswer(
            data=clean_answer(text), query=query, documents=documents,
            meta={"score": score, "raw": text, "prompt_tokens": len(ids) + soft_len, "new_tokens": n_new},
        )
        return {"answers": [answer]}

    @torch.inference_mode()
    def _generate(self, input_ids: torch.Tensor) -> tuple[str, float, int]:
        backbone = self._backbone
        model, tok = backbone.model, backbone.tokenizer
        kwargs = dict(
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False,
            eos_token_id=backbone.stop_token_ids, pad_token_id=tok.pad_token_id,
            output_scores=True, return_dict_in_generate=True,
        )
        if self._soft is not None:
            embeds = self._soft(model.get_input_embeddings()(input_ids))
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
            new = out.sequences[0]  # with inputs_embeds only the new tokens come back
        else:
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            new = out.sequences[0, input_ids.shape[1]:]
        beam_indices = getattr(out, "beam_indices", None)
        logp = model.compute_transition_scores(out.sequences, out.scores, beam_indices, normalize_logits=True)[0]
        logp = logp[torch.isfinite(logp)][: len(new)]
        score = float(torch.exp(logp.mean())) if len(logp) else 0.0
        stops = set(backbone.stop_token_ids)
        kept = [int(t) for t in new if int(t) not in stops and int(t) != tok.pad_token_id]
        return tok.decode(kept, skip_special_tokens=True), score, len(new)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, model=self.model, template=self.template, soft_prompt=self.soft_prompt,
            context_length=self.context_length, max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams, dtype=self.dtype,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrozenLMReader":
        return default_from_dict(cls, data)
