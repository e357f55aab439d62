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
