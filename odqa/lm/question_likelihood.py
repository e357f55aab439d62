"""Unsupervised passage re-ranking by question likelihood (UPR; Sachan et al., 2022).

A passage is as relevant as it makes the question likely: the frozen LM reads the passage
and an instruction to write a question about it, and the score is the mean log-probability of
the question's tokens. Nothing is trained; the backbone is the reader's own.

    score = question_log_likelihoods(backbone, "Who wrote Hamlet?", [("Hamlet", "Hamlet is a tragedy by ...")])
"""

from __future__ import annotations

import torch

INSTRUCTION = "Please write a question based on this passage."  # UPR's prompt


def _pair_ids(tokenizer, question: str, title: str, text: str) -> tuple[list[int], list[int]]:
    """``(context ids, question ids)``: the passage with UPR's instruction, then the question."""
    passage = f"{title}: {text}" if title else text
    context = tokenizer(f"Passage: {passage}\n{INSTRUCTION}\nQuestion:", add_special_tokens=True)["input_ids"]
    return context, tokenizer(" " + question, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def question_log_likelihoods(backbone, question: str, passages: list[tuple[str, str]], batch_size: int = 8,
                             max_passage_tokens: int = 256) -> list[float]:
    """Mean log p(question token | passage, instruction, earlier question tokens), one per passage.

    Pairs are right-padded within a batch and the mask hides the padding, so a passage's score
    does not depend on its batch. Passages are cut to ``max_passage_tokens`` (their head kept).
    """
    from odqa.lm.likelihood import row_sums, target_inputs, target_logprobs

    model, tok = backbone.model, backbone.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pairs = []
    for title, text in passages:
        context, q_ids = _pair_ids(tok, question, title, text)
        context = context[:max_passage_tokens]
        pairs.append((context + q_ids, len(context)))
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        logp, rows = target_logprobs(model, *target_inputs(model, None, batch, pad))
        counts = row_sums(torch.ones_like(logp), rows, len(batch))
        scores += (row_sums(logp, rows, len(batch)) / counts.clamp(min=1)).tolist()  # no question tokens: 0.0
    return scores
