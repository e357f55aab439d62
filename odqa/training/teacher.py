"""The frozen reader as the re-ranker's teacher (Izacard et al., 2022, Atlas "perplexity
distillation"; Shi et al., 2023, REPLUG "LM-supervised retrieval").

A passage is as useful as it makes the gold answer likely: for each training question and each
of its retrieved candidates, the teacher score is log p(answer + newline | question, that one
passage) under the pipeline's own frozen reader -- its backbone, its template and its soft
prompt, the same input the reader would read. The re-ranker then learns to match the softmax of
those scores at a temperature (:func:`odqa.training.reranker.distill_loss`).

Scores are cached one question per jsonl line (``teacher-scores.jsonl`` in the run's work dir),
so a killed run resumes where it stopped and a rerun with other student settings pays nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from odqa.errors import PipelineConfigError
from odqa.runs import RunWriter, read_records

SCORES_FILE = "teacher-scores.jsonl"


class ReaderTeacher:
    """Scores (question, answer, passage) with the frozen reader of a pipeline."""

    def __init__(self, reader, batch_size: int = 8):
        """
        :param reader: The pipeline's :class:`~odqa.components.readers.FrozenLMReader` (its model,
            template and soft prompt are used; nothing is generated).
        :param batch_size: Passages per forward pass.
        """
        from odqa.lm.backbone import load_backbone
        from odqa.lm.generation import PrefixCache
        from odqa.lm.prompting import get_template
        from odqa.lm.soft_prompt import SoftPrompt
        from odqa.training.reader import newline_id

        self.name = {"model": reader.model, "template": reader.template, "soft_prompt": reader.soft_prompt}
        self.backbone = load_backbone(reader.model, reader.dtype)
        self.template = get_template(reader.template)
        self.soft = (SoftPrompt.load(reader.soft_prompt, reader.model, self.backbone.model.config.hidden_size)
                     .to(self.backbone.device) if reader.soft_prompt else None)
        self.batch_size = batch_size
        # the soft prompt's keys and values, computed once and shared by every passage
        self.prefix = PrefixCache.build(self.backbone.model, self.soft, []) if self.soft is not None else None
        tok = self.backbone.tokenizer
        self.newline_id = newline_id(tok)

    @torch.inference_mode()
    def scores(self, question: str, answer: str, passages: list[tuple[str, str]]) -> list[float]:
        """log p(answer tokens, then the newline the reader stops on | question, passage), summed
        over the answer's tokens: one score per passage, each read alone."""
        from odqa.lm.likelihood import row_sums, target_inputs, target_logprobs
        from odqa.training.reader import encode_example

        model, tok = self.backbone.model, self.backbone.tokenizer
        examples = [encode_example(tok, self.template, {"question": question, "passages": [p]}, answer,
                                   self.newline_id) for p in passages]
        out: list[float] = []
        for start in range(0, len(examples), self.batch_size):
            batch = examples[start:start + self.batch_size]
            logp, rows = target_logprobs(model, *target_inputs(model, None, batch, tok.pad_token_id),
                                         prefix=self.prefix)
            out += row_sums(logp, rows, len(batch)).tolist()
        return out


def teacher_scores(teacher: ReaderTeacher, questions: list, candidates: list[list], path: Path,
                   progress: bool = True) -> list[list[float]]:
    """Teacher scores of every question's candidates (Haystack Documents), resumably cached in ``path``.

    A cached line is reused only when it names the same question, teacher and candidate ids, so a
    changed pipeline or reader recomputes rather than trusting stale scores.
    """
    from tqdm.auto import tqdm

    def key(q, docs) -> dict:
        return {"id": str(q.id), "teacher": teacher.name, "answer": q.answers[0], "candidates": [d.id for d in docs]}

    done = {str(r["id"]): r for r in read_records(path)}
    todo = [(q, docs) for q, docs in zip(questions, candidates)
            if not _matches(done.get(str(q.id)), key(q, docs))]
    if any(str(q.id) in done for q, _ in todo):
        raise PipelineConfigError(f"'{path}' holds teacher scores made with another reader or other candidates; "
                                  "delete it (or the whole work dir) to score again")
    with RunWriter(path) as writer:
        for q, docs in tqdm(todo, desc="teacher scores", unit="q", disable=not progress or not todo):
            rec = {**key(q, docs), "scores": teacher.scores(
                q.question, q.answers[0], [(d.meta.get("title", ""), d.content) for d in docs])}
            writer.write(rec)
            done[str(q.id)] = rec
    return [done[str(q.id)]["scores"] for q in questions]


def _matches(rec: dict | None, key: dict) -> bool:
    return rec is not None and all(rec.get(k) == v for k, v in key.items())
