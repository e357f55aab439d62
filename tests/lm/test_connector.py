"""The recursion connector (odqa.lm.connector) on tiny shapes and the tiny random Llama: shapes,
its blank-line start, save/load and the checks on load."""

from __future__ import annotations

import pytest
import torch

from conftest import HIDDEN
from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError
from odqa.lm.connector import CONNECTOR, Connector


def test_connector_maps_hidden_states_to_input_embeddings_of_the_same_shape():
    connector = Connector(HIDDEN, bottleneck=8)
    for shape in [(5, HIDDEN), (2, 7, HIDDEN)]:
        assert connector(torch.randn(*shape)).shape == shape
    assert connector.num_parameters == 1 + (HIDDEN * 8 + 8) + (8 * HIDDEN + HIDDEN)


def test_connector_refuses_states_of_another_width():
    with pytest.raises(PipelineConfigError, match=r"takes \[\.\.\., 32\] hidden states, got \(3, 16\)"):
        Connector(HIDDEN, 8)(torch.randn(3, 16))
    with pytest.raises(PipelineConfigError, match="sizes must be positive"):
        Connector(HIDDEN, 0)


def test_fresh_connector_writes_the_newline_embedding_at_every_position(backbone):
    connector = Connector.for_backbone(backbone.model, backbone.tokenizer, bottleneck=8)
    newline = backbone.tokenizer.encode("\n", add_special_tokens=False)[-1]
    blank = backbone.model.get_input_embeddings().weight[newline]
    out = connector(torch.randn(4, HIDDEN) * 30)  # whatever the states, a blank line each
    assert torch.allclose(out, blank.expand(4, -1), atol=1e-6)


def test_connector_save_load_round_trip_and_checks(tmp_path, tiny_lm):
    connector = Connector(HIDDEN, 8, scale=0.3)
    torch.nn.init.normal_(connector.up.weight)
    connector.save(tmp_path)
    loaded = Connector.load(tmp_path, tiny_lm, HIDDEN)
    x = torch.randn(3, HIDDEN)
    assert torch.equal(loaded(x), connector(x))
    with pytest.raises(ArtifactMismatchError, match="hidden size 64"):
        Connector.load(tmp_path, tiny_lm, 64)
    with pytest.raises(ResourceNotFoundError, match=f"expected a dir with {CONNECTOR}"):
        Connector.load(tmp_path / "missing")
    (tmp_path / CONNECTOR).write_bytes(b"not safetensors")
    with pytest.raises(ArtifactMismatchError, match="unreadable"):
        Connector.load(tmp_path)


# --- candidates and sampling settings ---------------------------------------------------------------
