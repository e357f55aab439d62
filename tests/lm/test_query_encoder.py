"""Query-side fine-tuning's model (odqa.lm.query_encoder) on the tiny random sentence-transformers
encoder: before any training it scores exactly as the dense retriever does; its artifact loads
back to the same scores; bad artifacts are refused with messages that say what to do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from odqa.encoders import load_encoder
from odqa.errors import ArtifactMismatchError, PipelineConfigError
from odqa.index import open_index
from odqa.lm.query_encoder import INITIAL_SCALE, QueryEncoder, base_hash, load_query_encoder

QUESTIONS = ["Who wrote Romeo and Juliet?", "What is the capital of Australia?"]


def test_untrained_encoder_is_the_dense_retriever(st_encoder, flat_index):
    """Without an adapter the embedding is the retriever's, so scores order candidates as FAISS does."""
    enc = QueryEncoder(st_encoder)
    with torch.no_grad():
        mine = enc.embed(QUESTIONS).numpy()
    assert np.allclose(mine, load_encoder(st_encoder).encode_queries(QUESTIONS), atol=1e-5)
    index = open_index(flat_index)
    faiss_scores, rows = index.dense().search(mine[:1], 5)
    vectors = torch.from_numpy(index.vectors([index.passages[int(i)].id for i in rows[0]]))
    with torch.no_grad():
        scores = enc.scores(QUESTIONS[:1], vectors[None])[0].numpy()
    assert np.allclose(scores, INITIAL_SCALE * faiss_scores[0], atol=1e-4)


def test_a_copy_of_its_own(st_encoder):
    """The encoder training builds never shares weights with the retriever's cached one."""
    enc = QueryEncoder(st_encoder)
    shared = {p.data_ptr() for p in load_encoder(st_encoder).model.parameters()}
    assert not shared & {p.data_ptr() for p in enc.parameters()}
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["log_scale"]


def test_a_loaded_artifact_shares_the_retrievers_tensors(tmp_path, st_encoder):
    """Loaded for inference, the adapter sits unmerged on the retriever's very tensors: one copy of
    the encoder in memory, and the retriever still embeds exactly as before."""
    out, trained = _artifact(tmp_path, st_encoder)
    retriever = load_encoder(st_encoder)
    before = retriever.encode_queries(QUESTIONS)
    loaded, _ = load_query_encoder(out)
    again, _ = load_query_encoder(out)
    assert load_encoder(st_encoder, None) is retriever  # the dense retriever's spelling of the same load
    base = {p.data_ptr() for p in retriever.model.parameters()}
    for enc in (loaded, again):
        mine = {n: p.data_ptr() for n, p in enc.named_parameters()}
        assert base <= set(mine.values())  # every base tensor is the retriever's
        assert not base & {ptr for n, ptr in mine.items() if "lora_" in n}  # the adapter is its own
    assert np.array_equal(retriever.encode_queries(QUESTIONS), before)
    with torch.no_grad():
        mine = loaded.embed(QUESTIONS).numpy()
        assert np.allclose(mine, trained.embed(QUESTIONS).numpy(), atol=1e-6)  # the adapter is applied
    assert not np.allclose(mine, before, atol=1e-6)  # (the tiny random encoder moves by 1e-5 to 1e-4)


def test_a_dpr_encoder_cannot_be_shared(dpr_encoders):
    with pytest.raises(PipelineConfigError, match="is a DPR encoder; a query encoder adapts a sentence-transformers "
                                                  "encoder"):
        QueryEncoder(dpr_encoders[0], share=True)


def _artifact(tmp_path, st_encoder, scale: float = 7.5):
    """An adapter with non-zero weights, saved as the trainer saves one."""
    from peft import LoraConfig, get_peft_model

    enc = QueryEncoder(st_encoder)
    digest = base_hash(enc)
    enc.set_transformer(get_peft_model(enc.transformer, LoraConfig(r=2, lora_alpha=4, target_modules=["query"])))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        enc.log_scale.fill_(float(np.log(scale)))
    out = tmp_path / "qenc"
    enc.transformer.save_pretrained(str(out))
    (out / "manifest.json").write_text(json.dumps({"kind": "query_encoder", "base_model": st_encoder,
                                                   "base_model_hash": digest, "scale": scale}))
    enc.eval()
    return out, enc


def test_artifact_loads_to_the_same_scores(tmp_path, st_encoder):
    out, trained = _artifact(tmp_path, st_encoder)
    loaded, manifest = load_query_encoder(out)
    vectors = torch.randn(2, 3, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.scores(QUESTIONS, vectors), trained.scores(QUESTIONS, vectors), atol=1e-5)
        untrained = QueryEncoder(st_encoder).scores(QUESTIONS, vectors) * 7.5 / INITIAL_SCALE
    assert not torch.allclose(loaded.scores(QUESTIONS, vectors), untrained, atol=1e-3)  # the adapter is applied
    assert manifest["scale"] == 7.5 and not any(p.requires_grad for p in loaded.parameters())


def test_bad_artifacts(tmp_path, st_encoder, st_encoder_other):
    with pytest.raises(ArtifactMismatchError, match="does not exist; train one with `odqa train reranker "
                                                    "--student query-encoder"):
        load_query_encoder(tmp_path / "missing")
    out, _ = _artifact(tmp_path, st_encoder)
    manifest = json.loads((out / "manifest.json").read_text())

    (out / "manifest.json").write_text(json.dumps({**manifest, "kind": "reranker"}))
    with pytest.raises(ArtifactMismatchError, match="is a 'reranker', not a 'query_encoder'"):
        load_query_encoder(out)

    (out / "manifest.json").write_text(json.dumps({**manifest, "base_model": st_encoder_other}))
    with pytest.raises(ArtifactMismatchError, match="trained on encoder .* now loads other weights"):
        load_query_encoder(out)

    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(out / "adapter_model.safetensors", tmp_path / "keep")
    (out / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactMismatchError, match="is missing adapter_model.safetensors; re-create it"):
        load_query_encoder(out)
