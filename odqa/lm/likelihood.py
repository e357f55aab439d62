"""The frozen LM's log-likelihood of target tokens after a prompt: one mechanism for every scorer
and loss that asks "how likely are these tokens here" -- the reader's prompt-tuning loss, the
reader as the re-ranker's teacher (log p(answer | question, passage)) and the zero-shot UPR
ranker (log p(question | passage)).

    embeds, mask, labels = target_inputs(model, soft_prompt_or_None, [(prompt_ids + target_ids, len(prompt_ids))], pad)
    logp, rows = target_logprobs(model, embeds, mask, labels)   # per target token, and its row
    per_row = row_sums(logp, rows, 1)
"""

from __future__ import annotations

import torch


def target_inputs(model, soft, batch: list[tuple[list[int], int]], pad_id: int):
    """``(inputs_embeds, attention_mask, labels)`` of ``(token ids, prompt length)`` pairs: the soft
    prompt prepended (``soft`` may be ``None``), right padding, labels only on the tokens after the
    prompt (the targets)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (seq, n_prompt) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
    embedding = model.get_input_embeddings()
    ids, mask, labels = (t.to(embedding.weight.device) for t in (ids, mask, labels))
    embeds = embedding(ids)
    if soft is None:
        return embeds, mask, labels
    p = soft.length
    mask = torch.cat([mask.new_ones((len(batch), p)), mask], dim=1)
    labels = torch.cat([labels.new_full((len(batch), p), -100), labels], dim=1)
    return soft(embeds), mask, labels


def target_logprobs(model, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                          prefix=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p of each labelled token, its row)`` under the frozen LM over ``inputs_embeds``, where
    ``labels != -100`` (``labels[:, t]`` is the token at position t). The LM head runs only where a
    label is predicted (position t predicts token t+1): a [batch, seq, vocab] logits tensor would
    cost ~0.6 GB and a fifth of the step.

    ``prefix`` (a :class:`~odqa.lm.generation.PrefixCache`, inference only): the rows continue
    after those cached keys and values, shared by the batch, instead of recomputing them per row.
    """
    kwargs = {}
    if prefix is not None:
        b, n = mask.shape
        cache = prefix.fresh()
        cache.batch_repeat_interleave(b)
        mask = torch.cat([mask.new_ones((b, prefix.length)), mask], dim=1)
        kwargs = {"past_key_values": cache, "use_cache": True,
                  "position_ids": torch.arange(prefix.length, prefix.length + n, device=mask.device).expand(b, n)}
    hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, **kwargs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft capping, as the model's own forward applies it
        logits = torch.tanh(logits / cap) * cap
    logp = -torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(targets)[keep]
    return logp, rows


def row_sums(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of ``values`` per row index (``rows`` as :func:`target_logprobs` returns them): ``[n]``."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
