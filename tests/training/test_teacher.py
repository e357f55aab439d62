"""The frozen reader as the re-ranker's teacher: its scores are the reader's own log p(answer | question, passage)."""

from __future__ import annotations

import pytest
import torch

from odqa.components.readers import FrozenLMReader
from odqa.lm.prompting import encode_parts, get_template
from odqa.training.teacher import ReaderTeacher

PASSAGES = [("Hamlet", "Hamlet is a tragedy by William Shakespeare."),
            ("Canberra", "Canberra is the capital city of Australia, chosen in 1908 as a compromise."),
            ("Mars", "Mars is the fourth planet from the Sun.")]


def reference(backbone, soft, template, question, answer, passage) -> float:
    """log p(answer tokens + newline) with the soft prompt before the whole prompt, by a plain forward."""
    tok, model = backbone.tokenizer, backbone.model
    prefix, body = encode_parts(tok, get_template(template), question, [passage])
    target = tok(" " + answer, add_special_tokens=False)["input_ids"] + tok.encode("\n", add_special_tokens=False)
    ids = torch.tensor([prefix + body + target])
    embeds = model.get_input_embeddings()(ids)
    if soft is not None:
        embeds = torch.cat([soft.prompt[None], embeds], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs_embeds=embeds).logits[0].float(), -1)
    start = embeds.shape[1] - len(target)
    return sum(float(logp[start - 1 + i, t]) for i, t in enumerate(target))


@pytest.mark.parametrize("with_prompt", [False, True])
def test_scores_are_the_readers_answer_log_likelihood(tiny_lm, soft_prompt_dir, with_prompt):
    reader = FrozenLMReader(model=tiny_lm, template="span-chat", soft_prompt=soft_prompt_dir if with_prompt else None)
    teacher = ReaderTeacher(reader, batch_size=2)  # batches of two: padding must not change a score
    scores = teacher.scores("Who wrote Hamlet?", "William Shakespeare", PASSAGES)
    expected = [reference(teacher.backbone, teacher.soft, "span-chat", "Who wrote Hamlet?", "William Shakespeare", p)
                for p in PASSAGES]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert all(s < 0 for s in scores)


class CountingTeacher:
    """Stands in for ReaderTeacher in the cache's bookkeeping: a name and a scores() that counts calls."""

    def __init__(self, soft_prompt: str):
        self.name = {"model": "m", "template": "qa", "soft_prompt": soft_prompt}
        self.calls = 0

    def scores(self, question, answer, passages):
        self.calls += 1
        return [-float(i) for i in range(len(passages))]


def _set(n: int):
    from haystack import Document

    from odqa.data.question import Question

    questions = [Question(id=f"q{i}", question=f"question {i}?", answers=[f"a{i}"]) for i in range(n)]
    candidates = [[Document(id=f"d{i}{j}", content=f"passage {j}", meta={"title": "T"}) for j in range(3)]
                  for i in range(n)]
    return questions, candidates


def test_teacher_scores_resume_and_refuse_a_stale_cache(tmp_path):
    from odqa.errors import PipelineConfigError
    from odqa.training.teacher import teacher_scores

    questions, candidates = _set(4)
    path = tmp_path / "teacher-scores.jsonl"
    first = CountingTeacher("p1")
    assert teacher_scores(first, questions[:2], candidates[:2], path, progress=False) == [[0.0, -1.0, -2.0]] * 2
    again = CountingTeacher("p1")
    assert len(teacher_scores(again, questions, candidates, path, progress=False)) == 4
    assert (first.calls, again.calls) == (2, 2)  # the cached two are not scored again
    with pytest.raises(PipelineConfigError) as e:
        teacher_scores(CountingTeacher("p2"), questions, candidates, path, progress=False)
    assert str(path) in str(e.value) and "another reader or other candidates" in str(e.value)
    assert "delete it" in str(e.value)
