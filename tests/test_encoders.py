"""odqa.encoders.share_weights: a model loaded from the retriever's checkpoint through another class
holds the retriever's tensors, once, and computes as before (the tiny random encoder)."""

from __future__ import annotations

import torch

from odqa.encoders import load_encoder, share_weights


def _frozen(model):
    model.requires_grad_(False)
    return model.eval()


def test_a_body_of_the_same_checkpoint_shares_every_tensor(st_encoder):
    from transformers import AutoModel, AutoModelForSequenceClassification

    retriever = load_encoder(st_encoder)
    theirs = {p.data_ptr() for p in retriever.model.parameters()}
    body = _frozen(AutoModel.from_pretrained(st_encoder))
    ids = torch.tensor([[2, 5, 7, 9, 3]])
    with torch.no_grad():
        before = body(input_ids=ids).last_hidden_state
    n = len(list(body.parameters()))
    assert share_weights(body, st_encoder) == n
    assert {p.data_ptr() for p in body.parameters()} <= theirs
    with torch.no_grad():
        assert torch.equal(body(input_ids=ids).last_hidden_state, before)
    assert not any(p.requires_grad for p in body.parameters())

    # a cross-encoder's body: the encoder's tensors are shared, its fresh head is its own
    cross = _frozen(AutoModelForSequenceClassification.from_pretrained(st_encoder, num_labels=1))
    assert share_weights(cross.base_model, st_encoder) == len(list(cross.base_model.parameters()))
    assert cross.classifier.weight.data_ptr() not in theirs


def test_what_differs_or_trains_is_not_shared(st_encoder, st_encoder_other):
    from transformers import AutoModel

    other = _frozen(AutoModel.from_pretrained(st_encoder_other))  # same shapes, other values
    ids = torch.tensor([[2, 5, 7, 9, 3]])
    with torch.no_grad():
        before = other(input_ids=ids).last_hidden_state
    # only the tensors that happen to be equal are shared: here biases and LayerNorms, still at their
    # initial zeros and ones; no weight matrix, for those differ
    theirs = {p.data_ptr() for p in load_encoder(st_encoder).model.parameters()}
    assert 0 < share_weights(other, st_encoder) < len(list(other.parameters()))
    assert not any(p.dim() == 2 and p.data_ptr() in theirs for p in other.parameters())
    with torch.no_grad():
        assert torch.equal(other(input_ids=ids).last_hidden_state, before)
    trainable = AutoModel.from_pretrained(st_encoder)  # requires_grad on: never shared
    assert share_weights(trainable, st_encoder) == 0
    assert share_weights(torch.nn.Linear(2, 2).requires_grad_(False), st_encoder) == 0  # another class
