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
    model, tok = backbone.model, backbone.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pairs = []
    for title, text in passages:
        context, q_ids = _pair_ids(tok, question, title, text)
        pairs.append((context[:max_passage_tokens], q_ids))
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        width = max(len(c) + len(q) for c, q in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (c, q) in enumerate(batch):
            ids[i, :len(c) + len(q)] = torch.tensor(c + q)
            mask[i, :len(c) + len(q)] = 1
        logits = model(input_ids=ids.to(backbone.device), attention_mask=mask.to(backbone.device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for i, (c, q) in enumerate(batch):
            positions = torch.arange(len(c) - 1, len(c) + len(q) - 1, device=logp.device)  # each predicts the next
            target = torch.tensor(q, device=logp.device)
            scores.append(float(logp[i, positions, target].mean()) if q else 0.0)
    return scores
