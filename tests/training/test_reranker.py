"""Re-ranker training (LoRA on a frozen encoder) on the tiny random BERT, corpus and index.

The models are random, so the assertions are about bookkeeping: what the artifact holds, that
the base never changes, that a resumed run continues the same run, that the ranker loads what
the trainer wrote, and that bad inputs fail with messages that say what to do.
"""

from __future__ import annotations

import json
from dataclasses import replace
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import CORPUS, user_env
from odqa.components.rankers import CrossEncoderRanker
from odqa.lm.cross_encoder import load_base, load_reranker, pair_text, score_pairs
from odqa.errors import ArtifactMismatchError, BackboneChangedError, ResourceNotFoundError, TrainingDataError
from odqa.training import reranker as rr
from odqa.training.checkpoints import load_checkpoint
from odqa.data.negatives import Ctx, TrainExample
from odqa.lm.backbone import weights_hash
from odqa.training.frozen import FrozenCheck
from odqa.training.checkpoints import work_dir
from odqa.training.reranker import RerankerTrainConfig, train_reranker

# (passage index, answer span): cloze questions made by blanking the span out of the passage
CLOZES = [(0, "William Shakespeare"), (1, "Australia"), (2, "Leonardo da Vinci"), (3, "1915"), (4, "Red Planet"),
          (9, "Alexander Fleming"), (11, "Herman Melville"), (16, "Japan"), (17, "1896"), (19, "Guido van Rossum")]
DEV = [("Who wrote Romeo and Juliet?", "William Shakespeare"), ("What is the capital of Australia?", "Canberra"),
       ("Who painted the Mona Lisa?", "Leonardo da Vinci"), ("Which planet is known as the Red Planet?", "Mars")]


def cloze_examples(negatives: int = 5) -> list[TrainExample]:
    out = []
    for n, (i, answer) in enumerate(CLOZES):
        p = CORPUS[i]
        others = [CORPUS[(i + 1 + j) % len(CORPUS)] for j in range(negatives)]
        out.append(TrainExample(
            id=f"c{n}", question=p["text"].replace(answer, "_____"), answers=[answer],
            positives=[Ctx(p["id"], p["title"], p["text"])],
            hard_negatives=[Ctx(o["id"], o["title"], o["text"]) for o in others],
            synthetic=True, source=f"cloze:tiny:{p['id']}"))
    return out


def write_examples(path: Path, examples: list[TrainExample]) -> Path:
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, write_pipeline):
    """A pipeline (tiny index + LM, join top 5), a cloze training file and a dev questions file."""
    d = tmp_path_factory.mktemp("reranker")
    pipeline = write_pipeline(d / "pipelines")
    train = write_examples(d / "train.jsonl", cloze_examples())
    dev = d / "dev.jsonl"
    dev.write_text("".join(json.dumps({"id": f"d{i}", "question": q, "answers": [a]}) + "\n"
                           for i, (q, a) in enumerate(DEV)), encoding="utf-8")
    return {"dir": d, "pipeline": pipeline, "train": train, "dev": str(dev)}


def config(base: str, **kw) -> RerankerTrainConfig:
    settings = dict(base=base, max_steps=4, batch_questions=2, negatives=3, lora_r=4, lora_alpha=8,
                    eval_every=2, save_every=1, patience=10, lr=1e-2)
    return RerankerTrainConfig(**(settings | kw))


@pytest.fixture(scope="module")
def trained(work, bare_bert):
    """One 4-step run on the bare tiny BERT (its head is made fresh and trained)."""
    out = work["dir"] / "artifacts" / "reranker"
    result = train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert), progress=False)
    return out, result


def lora_param_count(base: str, r: int) -> int:
    """LoRA A and B for every Linear named like a target, plus the whole one-output head."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    targets = ("query", "key", "value", "dense")
    lora = sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)
    return lora + sum(p.numel() for p in model.classifier.parameters())


# --- the artifact ---------------------------------------------------------------------------------
def test_artifact_files_and_manifest(trained, work, bare_bert):
    out, result = trained
    assert sorted(f.name for f in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "curves.png", "manifest.json"]
    m = json.loads((out / "manifest.json").read_text())
    assert m == result["manifest"]
    assert (m["kind"], m["backbone"], m["backbone_hash"], m["base_model"]) == ("reranker", None, None, bare_bert)
    assert m["data"] == {"train": str(work["train"]), "synthetic": True, "labels": "the file's positives and hard "
                         "negatives", "synthetic_examples": len(CLOZES), "examples": len(CLOZES),
                         "examples_in_file": len(CLOZES), "steps": 4}
    assert m["lora"] == {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["query", "key", "value", "dense"],
                         "modules_to_save": ["classifier"]}
    assert m["trainable_params"] == lora_param_count(bare_bert, r=4)
    assert m["train_seconds"] > 0 and m["tokenizer"] == "base" and m["max_length"] == 256
    dm = m["dev_metrics"]
    assert dm["questions"] == len(DEV) and dm["candidates_from"] == "join" and 0 < dm["candidates_per_question"] <= 5
    keys = ["recall@1", "recall@5", "recall@10", "recall@20", "mrr", "lm_input_recall"]
    for side in ("before", "after"):
        assert list(dm[side]) == keys
        assert all(0 <= dm[side][k] <= 100 for k in keys) and 0 <= dm[side]["mrr"] <= 1
    # the same candidates are re-ordered: recall over all of them cannot change
    assert dm["before"]["recall@20"] == dm["after"]["recall@20"]
    # the kept adapter is the best by dev MRR among the evaluations made (steps 2 and 4)
    assert [d["step"] for d in m["dev_history"]] == [2, 4]
    best = max(m["dev_history"], key=lambda d: d["mrr"])
    assert dm["best_step"] == best["step"] and dm["after"]["mrr"] == best["mrr"]
    assert result["size_bytes"] < 5 * 2**20
    assert m["size_bytes"] == result["size_bytes"]
    # the checkpoint lives beside the artifact, never inside it
    assert (out.parent / "reranker.work" / "checkpoint.pt").exists()  # the one checkpoint layout: OUT.work/


def test_adapter_was_trained_and_base_is_not_saved(trained):
    out, _ = trained
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        lora_b = [f.get_tensor(k) for k in keys if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # peft starts B at zero: training moved it
    assert any("classifier" in k for k in keys)
    assert not any("word_embeddings" in k or ("base_layer" in k) for k in keys)  # only adapter + head
    config_json = json.loads((out / "adapter_config.json").read_text())
    assert config_json["r"] == 4 and config_json["peft_type"] == "LORA"


def test_base_hash_is_the_untouched_base(trained, bare_bert):
    """The manifest's base hash is the hash of the base as it loads from disk, so the hash taken
    after training (which FrozenCheck compared with it) was that of the untouched base."""
    out, result = trained
    _, _, frozen, fresh = load_base(bare_bert)
    assert fresh == {"classifier.weight", "classifier.bias"}
    assert weights_hash(frozen) == result["manifest"]["base_model_hash"]
    assert not any(p.requires_grad for p in frozen.parameters())


def test_frozen_check_catches_a_changed_base(bare_bert):
    from peft import get_peft_model

    base, _, frozen, fresh = load_base(bare_bert)
    with pytest.raises(BackboneChangedError, match="weights changed"):
        with FrozenCheck(frozen, bare_bert):
            model = get_peft_model(base, rr.lora_config(config(bare_bert), fresh))
            with torch.no_grad():  # a write through the LoRA-wrapped model reaches the base's own tensor
                model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight.add_(1e-3)


def test_frozen_check_ignores_adapter_updates(bare_bert):
    from peft import get_peft_model

    base, _, frozen, fresh = load_base(bare_bert)
    with FrozenCheck(frozen, bare_bert) as check:
        model = get_peft_model(base, rr.lora_config(config(bare_bert), fresh))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.5)
    assert check.digest == weights_hash(frozen)


# --- resume ---------------------------------------------------------------------------------------
def test_resume_continues_a_shorter_run(work, bare_bert, tmp_path):
    out = tmp_path / "art"
    first = train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert, max_steps=2),
                           progress=False)
    saved = load_checkpoint(work_dir(out, resume=True))
    assert saved["step"] == 2 and [s for s, _ in saved["history"]["loss"]] == [1, 2]
    first_losses = list(saved["history"]["loss"])
    second = train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert, max_steps=4),
                            resume=True, progress=False)
    saved = load_checkpoint(work_dir(out, resume=True))
    assert saved["step"] == 4
    assert saved["history"]["loss"][:2] == first_losses  # the history continues, not restarts
    assert [s for s, _ in saved["history"]["loss"]] == [1, 2, 3, 4]
    assert [d["step"] for d in saved["history"]["dev"]] == [2, 4]
    assert second["manifest"]["data"]["steps"] == 4 and first["manifest"]["data"]["steps"] == 2
    assert second["manifest"]["train_seconds"] >= first["manifest"]["train_seconds"]


def test_resume_after_a_crash_matches_an_uninterrupted_run(work, bare_bert, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train_reranker(work["pipeline"], work["train"], work["dev"], whole, config(bare_bert), progress=False)
    reference = load_checkpoint(work_dir(whole, resume=True))["history"]

    out = tmp_path / "crashed"
    real_step_loss, calls = rr.step_loss, {"n": 0}

    def crash_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real_step_loss(*args, **kwargs)

    monkeypatch.setattr(rr, "step_loss", crash_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert), progress=False)
    monkeypatch.setattr(rr, "step_loss", real_step_loss)
    assert not out.exists() and load_checkpoint(work_dir(out, resume=True))["step"] == 2
    train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert), resume=True, progress=False)
    history = load_checkpoint(work_dir(out, resume=True))["history"]
    assert [s for s, _ in history["loss"]] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(history["loss"], reference["loss"]):
        assert a == pytest.approx(b, abs=1e-5)
    assert [d["mrr"] for d in history["dev"]] == pytest.approx([d["mrr"] for d in reference["dev"]], abs=1e-6)


def test_resume_refuses_other_settings(work, bare_bert, tmp_path):
    out = tmp_path / "art"
    train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert, max_steps=1), progress=False)
    with pytest.raises(ArtifactMismatchError, match="lora_r=4.*8.*drop --resume"):
        train_reranker(work["pipeline"], work["train"], work["dev"], out, config(bare_bert, lora_r=8), resume=True,
                       progress=False)


# --- the ranker loads the artifact ------------------------------------------------------------------
@pytest.fixture
def docs(make_docs):
    return make_docs(*[(p["id"], p["title"], p["text"]) for p in CORPUS[:6]])


def test_ranker_loads_artifact_and_ranks(trained, docs, bare_bert):
    from peft import PeftModel

    out, _ = trained
    ranker = CrossEncoderRanker(model=str(out), top_k=4, batch_size=2)
    ranked = ranker.run(query="Who wrote Romeo and Juliet?", documents=docs)["documents"]
    assert len(ranked) == 4 and set(d.id for d in ranked) <= {d.id for d in docs}
    scores = [d.score for d in ranked]
    assert scores == sorted(scores, reverse=True)
    # the ranker (its adapter on the process's shared base) scores as the adapter on a fresh base does
    base, tokenizer, _, _ = load_base(bare_bert)
    unmerged = PeftModel.from_pretrained(base, str(out)).eval()
    by_id = {d.id: d for d in docs}
    pairs = [("Who wrote Romeo and Juliet?", pair_text(by_id[d.id].meta["title"], by_id[d.id].content)) for d in ranked]
    assert score_pairs(unmerged, tokenizer, pairs, 8, 512) == pytest.approx(scores, abs=1e-4)
    # and not as the base with its fresh head would: the head came from the artifact
    fresh, tok, _, _ = load_base(bare_bert)
    assert score_pairs(fresh, tok, pairs, 8, 512) != pytest.approx(scores, abs=1e-4)


def test_rerankers_share_one_base(trained, bare_bert):
    """Two re-rankers of one base hold the base's tensors once, each with its own adapter and head,
    and loading them changes no base weight."""
    from odqa.lm.cross_encoder import shared_base

    out, _ = trained
    base, digest = shared_base(bare_bert)
    before = weights_hash(base)
    first, _, _ = load_reranker(out)
    second, _, _ = load_reranker(out)
    _, _, frozen, _ = load_base(bare_bert)
    assert weights_hash(frozen) == digest and weights_hash(base) == before
    embeddings = base.get_input_embeddings().weight.data_ptr()
    query = base.bert.encoder.layer[0].attention.self.query.weight.data_ptr()
    for model in (first, second):
        inner = model.get_base_model()
        assert inner.get_input_embeddings().weight.data_ptr() == embeddings
        layer = inner.bert.encoder.layer[0].attention.self.query
        assert layer.base_layer.weight.data_ptr() == query  # the adapter wraps the shared weight, unmerged
    adapters = [{p.data_ptr() for n, p in m.named_parameters() if "lora_" in n or "modules_to_save" in n}
                for m in (first, second)]
    assert adapters[0] and not adapters[0] & adapters[1]
    assert weights_hash(base) == before


def test_ranker_to_dict_from_dict(trained):
    out, _ = trained
    r = CrossEncoderRanker(model=str(out), top_k=3)
    data = r.to_dict()
    assert data["init_parameters"]["model"] == str(out)
    again = CrossEncoderRanker.from_dict(data)
    assert again.to_dict() == data


def test_pipeline_with_trained_ranker(trained, write_pipeline, tmp_path):
    """A ranker `model` written as ./ or ../ in pipeline YAML resolves against the YAML's directory."""
    import yaml

    import odqa

    out, _ = trained
    path = write_pipeline(tmp_path / "p", ranker=out)
    written = yaml.safe_load(path.read_text())["components"]["ranker"]["init_parameters"]["model"]
    assert written.startswith("../")
    qa = odqa.load(path)
    answer, outputs = qa.ask_with_outputs("Who wrote Romeo and Juliet?")
    ranked = outputs["ranker"]["documents"]
    assert ranked and [d.score for d in ranked] == sorted((d.score for d in ranked), reverse=True)
    assert all("retrieval_score" in d.meta for d in ranked)


def test_cli_train_reranker(work, bare_bert, tmp_path, capsys):
    from odqa.cli import main

    out = tmp_path / "cli-art"
    code = main(["train", "reranker", "--pipeline", str(work["pipeline"]), "--train", str(work["train"]),
                 "--dev", work["dev"], "--out", str(out), "--base", bare_bert, "--max-steps", "2",
                 "--batch-questions", "2", "--negatives", "2", "--lora-r", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "retrieval order" in printed and "re-ranked" in printed and "lm_input_recall" in printed
    m = json.loads((out / "manifest.json").read_text())
    assert m["lora"]["r"] == 2 and m["lora"]["alpha"] == 4 and m["data"]["steps"] == 2
    assert m["command"].startswith("odqa train reranker --pipeline")


def test_several_training_files_are_trained_on_together(work, bare_bert, tmp_path):
    real = write_examples(tmp_path / "real.jsonl", [replace(e, id=f"real-{e.id}", synthetic=False)
                                                     for e in cloze_examples()[:3]])
    result = train_reranker(work["pipeline"], [work["train"], real], work["dev"], tmp_path / "art",
                            config(bare_bert, max_steps=1, eval_every=1), progress=False)
    data = result["manifest"]["data"]
    assert data["train"] == [str(work["train"]), str(real)]
    assert data["examples"] == len(cloze_examples()) + 3 and data["synthetic"] == "mixed"


# --- bad inputs -----------------------------------------------------------------------------------
def test_training_file_without_positives(work, bare_bert, tmp_path):
    examples = cloze_examples()
    examples[3].positives = []
    path = write_examples(tmp_path / "nopos.jsonl", examples)
    with pytest.raises(TrainingDataError) as e:
        train_reranker(work["pipeline"], path, work["dev"], tmp_path / "out", config(bare_bert), progress=False)
    msg = str(e.value)
    assert "has no positive passage" in msg and "'c3'" in msg and str(path) in msg and "odqa data negatives" in msg
    assert not (tmp_path / "out").exists()


def test_training_file_without_negatives(work, bare_bert, tmp_path):
    path = write_examples(tmp_path / "noneg.jsonl", cloze_examples(negatives=0))
    with pytest.raises(TrainingDataError, match="hard negatives.*odqa data negatives"):
        train_reranker(work["pipeline"], path, work["dev"], tmp_path / "out", config(bare_bert), progress=False)


def test_training_file_missing_or_malformed(work, bare_bert, tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        train_reranker(work["pipeline"], tmp_path / "nope.jsonl", work["dev"], tmp_path / "o", config(bare_bert),
                       progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(cloze_examples()[0].to_dict()) + "\n{\"question\": \"no id\"}\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:2: missing .answers."):
        train_reranker(work["pipeline"], bad, work["dev"], tmp_path / "o", config(bare_bert), progress=False)


def test_artifact_of_another_kind(trained, tmp_path, docs):
    out, _ = trained
    other = tmp_path / "soft_prompt"
    shutil.copytree(out, other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**m, "kind": "soft_prompt"}))
    with pytest.raises(ArtifactMismatchError, match="is a 'soft_prompt', not a 'reranker'"):
        CrossEncoderRanker(model=str(other)).run(query="Who wrote Romeo and Juliet?", documents=docs)


def test_missing_artifact_dir(tmp_path, docs):
    missing = tmp_path / "artifacts" / "reranker"
    with pytest.raises(ResourceNotFoundError, match="does not exist.*odqa train reranker"):
        CrossEncoderRanker(model=str(missing)).run(query="Who wrote Romeo and Juliet?", documents=docs)
    with pytest.raises(ArtifactMismatchError, match="does not exist.*odqa train reranker"):
        load_reranker(missing)


def test_artifact_missing_adapter(trained, tmp_path):
    out, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactMismatchError, match="missing adapter_model.safetensors"):
        load_reranker(broken)


def test_artifact_for_other_base_weights(trained, tmp_path):
    out, _ = trained
    other = tmp_path / "other"
    shutil.copytree(out, other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**m, "base_model_hash": "0" * 64}))
    with pytest.raises(ArtifactMismatchError, match="other weights.*retrain"):
        load_reranker(other)


def test_pipeline_without_packer(work, bare_bert, tmp_path):
    import yaml

    data = yaml.safe_load(Path(work["pipeline"]).read_text())
    for name in ("packer", "reader"):
        data["components"].pop(name)
    data["connections"] = [c for c in data["connections"] if "packer" not in c["receiver"] + c["sender"]]
    path = work["pipeline"].parent / "no_packer.yml"
    path.write_text(yaml.safe_dump(data))
    from odqa.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match="no ContextPacker"):
        train_reranker(path, work["train"], work["dev"], tmp_path / "o", config(bare_bert), progress=False)


# --- the real thing -------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_training_on_minilm_and_the_real_index(tmp_path):
    """`odqa train reranker --quick` on the bundled MiniLM, the default index and retrieval."""
    if not (REPO / "indexes" / "wiki-vital" / "manifest.json").exists():
        pytest.skip("indexes/wiki-vital is not built (make index)")
    passages = [json.loads(line) for _, line in zip(range(40), open(REPO / "indexes" / "wiki-vital" / "passages.jsonl"))]
    examples = []
    for i, p in enumerate(passages[:12]):
        title = p["title"]
        negs = [passages[(i + 1 + j) % len(passages)] for j in range(7)]
        examples.append(TrainExample(
            id=f"q{i}", question=f"Which article begins: {p['text'][:120]} ...?", answers=[title],
            positives=[Ctx(str(p["id"]), title, p["text"])],
            hard_negatives=[Ctx(str(n["id"]), n["title"], n["text"]) for n in negs], synthetic=True,
            source="test"))
    train = write_examples(tmp_path / "train.jsonl", examples)
    out = tmp_path / "reranker"
    env = user_env()
    # the retrieval and packer of the default pipeline, without the learned modules it may reference
    pipeline = REPO / "pipelines" / "frozen_reader_zeroshot.yml"
    proc = subprocess.run([sys.executable, "-m", "odqa.cli", "train", "reranker", "--quick",
                           "--pipeline", str(pipeline), "--train", str(train),
                           "--dev", "fanoutqa-wiki:dev", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "re-ranked" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["base_model"] == "minilm-l6" and m["dev_metrics"]["questions"] == 6
    assert m["dev_metrics"]["candidates_per_question"] > 20  # the join's candidates, not a handful
    assert m["size_bytes"] < 5 * 2**20
    model, _, manifest = load_reranker(out)
    _, _, frozen, _ = load_base("minilm-l6")
    assert weights_hash(frozen) == manifest["base_model_hash"]
    ranker = CrossEncoderRanker(model=str(out))
    from haystack import Document

    docs = [Document(id=str(p["id"]), content=p["text"], meta={"title": p["title"]}) for p in passages[:10]]
    ranked = ranker.run(query=examples[0].question, documents=docs)["documents"]
    assert len(ranked) == 10 and [d.score for d in ranked] == sorted((d.score for d in ranked), reverse=True)


@pytest.mark.slow
def test_quick_reader_taught_training_on_real_questions(tmp_path):
    """`odqa train reranker --quick --labels reader` with the SmolLM2 pipeline's reader as the teacher."""
    if not (REPO / "indexes" / "wiki-vital" / "manifest.json").exists():
        pytest.skip("indexes/wiki-vital is not built (make index)")
    out = tmp_path / "taught"
    proc = subprocess.run([sys.executable, "-m", "odqa.cli", "train", "reranker", "--quick", "--labels", "reader",
                           "--pipeline", str(REPO / "pipelines" / "frozen_reader_smollm2.yml"), "--train", "trivia-wiki:train",
                           "--train-candidates", "2", "--dev", "trivia-wiki:dev", "--dev-candidates", "4",
                           "--out", str(out)], capture_output=True, text=True, env=user_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    stats = m["data"]["teacher"]
    assert stats["questions"] == 12 and stats["reader"]["model"] == "smollm2-135m-instruct"
    assert stats["reader"]["soft_prompt"].endswith("reader-prompt-smollm2-trivia")
    from odqa.lm.backbone import load_backbone
    assert stats["reader_backbone_hash"] == weights_hash(load_backbone("smollm2-135m-instruct").model)


def test_dev_candidates_are_cached_and_reused_without_retrieval(trained, work, monkeypatch):
    """The run wrote its dev candidates beside the checkpoint; a rebuild with the same key reads
    them back (no retrieval runs), and another key retrieves again."""
    cache = work_dir(trained[0], resume=True) / rr.DEV_CACHE
    saved = json.loads(cache.read_text())
    assert saved["key"]["dev"] == work["dev"] and len(saved["questions"]) == len(DEV)
    fresh = rr.build_dev_set(work["pipeline"], work["dev"], progress=False)

    def no_retrieval(*args, **kwargs):
        raise AssertionError("retrieval ran although the cache matches")

    monkeypatch.setattr("haystack.Pipeline.run", no_retrieval)
    cached = rr.build_dev_set(work["pipeline"], work["dev"], progress=False, cache=cache)
    assert [q.question for q in cached.questions] == [q.question for q in fresh.questions]
    assert [[d.content for d in docs] for docs in cached.candidates] == \
        [[d.content for d in docs] for docs in fresh.candidates]
    assert cached.flags == fresh.flags
    with pytest.raises(AssertionError, match="retrieval ran"):
        rr.build_dev_set(work["pipeline"], work["dev"], limit=2, progress=False, cache=cache)


# --- training on questions: groups from the pipeline's own retrieval ----------------------------------
QUESTIONS = [("Who wrote the tragedy Hamlet?", "William Shakespeare"), ("Which city is the capital of Australia?",
             "Canberra"), ("Who painted the Mona Lisa portrait?", "Leonardo da Vinci"),
             ("Who discovered penicillin?", "Alexander Fleming"), ("Who wrote Moby-Dick?", "Herman Melville"),
             ("Who created the Python language?", "Guido van Rossum")]


@pytest.fixture(scope="module")
def questions_file(work) -> Path:
    path = work["dir"] / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answers": [a]}) + "\n"
                            for i, (q, a) in enumerate(QUESTIONS)), encoding="utf-8")
    return path


def test_answer_labels_from_a_questions_file(work, questions_file, bare_bert, tmp_path):
    """Questions without passages: positives are the retrieved candidates holding an answer (DPR)."""
    out = tmp_path / "answer"
    m = train_reranker(work["pipeline"], questions_file, work["dev"], out,
                       config(bare_bert, train_candidates=5, max_steps=2), progress=False)["manifest"]
    found = rr.build_dev_set(work["pipeline"], str(questions_file), None, 5, progress=False)
    usable = [q for q, f in zip(found.questions, found.flags) if any(f) and not all(f)]
    assert usable, "the tiny corpus should hold some of these answers"
    assert m["data"]["examples"] == len(usable) and m["data"]["examples_in_file"] == len(QUESTIONS)
    assert m["data"]["labels"] == "positives hold an accepted answer (has_answer)" and m["data"]["synthetic"] is False
    assert m["config"]["train_candidates"] == 5


def test_reader_labels_are_cached_and_resumed(work, questions_file, bare_bert, tmp_path, monkeypatch):
    from odqa.training import teacher

    out = tmp_path / "taught"
    cfg = config(bare_bert, labels="reader", train_candidates=4, max_steps=2)
    calls = []
    scores = teacher.ReaderTeacher.scores
    monkeypatch.setattr(teacher.ReaderTeacher, "scores",
                        lambda self, *a: calls.append(a[0]) or scores(self, *a))
    monkeypatch.setattr(rr, "train_loop", _crash)
    with pytest.raises(RuntimeError, match="killed"):
        train_reranker(work["pipeline"], questions_file, work["dev"], out, cfg, progress=False)
    assert sorted(calls) == sorted(q for q, _ in QUESTIONS)
    lines = [json.loads(x) for x in (Path(f"{out}.work") / teacher.SCORES_FILE).read_text().splitlines()]
    assert [len(r["scores"]) for r in lines] == [len(r["candidates"]) for r in lines]
    assert all(s <= 0 for r in lines for s in r["scores"])  # log-probabilities
    monkeypatch.undo()
    monkeypatch.setattr(teacher.ReaderTeacher, "scores", lambda self, *a: pytest.fail("scored twice"))
    m = train_reranker(work["pipeline"], questions_file, work["dev"], out, cfg, resume=True,
                       progress=False)["manifest"]
    assert m["data"]["labels"].startswith("the frozen reader's log p(answer | question, passage)")
    assert m["data"]["examples"] == len(QUESTIONS) and m["config"]["labels"] == "reader"
    stats = m["data"]["teacher"]
    assert stats["questions"] == len(QUESTIONS) and stats["candidates"] == 4
    from odqa.lm.backbone import load_backbone
    assert stats["reader_backbone_hash"] == weights_hash(load_backbone(stats["reader"]["model"]).model)
    assert set(stats["top1_has_answer"]) == {"retrieval", "teacher"}
    assert all(0 <= v <= 100 for v in stats["top1_has_answer"].values())


def _crash(*args, **kwargs):
    raise RuntimeError("killed")


def test_reader_labels_need_questions(work, bare_bert, tmp_path):
    with pytest.raises(TrainingDataError, match="--labels reader needs questions as --train"):
        train_reranker(work["pipeline"], work["train"], work["dev"], tmp_path / "o",
                       config(bare_bert, labels="reader"), progress=False)
    assert not (tmp_path / "o").exists()


def test_distill_loss_is_the_kl_to_the_teacher():
    """KL(softmax(teacher / T) || softmax(student)): zero when the student matches, positive otherwise."""
    teacher = torch.tensor([[-1.0, -3.0, -2.0], [-0.5, -4.0, float("-inf")]])
    target = rr.teacher_targets(teacher, 2.0)
    assert target[0].tolist() == pytest.approx(torch.softmax(torch.tensor([-0.5, -1.5, -1.0]), 0).tolist())
    assert target[1, 2] == 0 and target.sum(1).tolist() == pytest.approx([1.0, 1.0])

    groups = [rr.TaughtGroup("a", "q", [Ctx(str(i), "", "p") for i in range(3)], [-1.0, -3.0, -2.0])]
    match = (teacher[0] / 2.0).tolist()
    cfg = RerankerTrainConfig(temperature=2.0)
    assert _kl(groups, match, cfg) == pytest.approx(0.0, abs=1e-6)
    assert _kl(groups, [-2.0, -1.0, -3.0], cfg) > 0.1


def _kl(groups, student: list[float], cfg) -> float:
    scores = torch.tensor([student])
    return float(rr.distill_loss(lambda questions, candidates: scores, groups, cfg))


# --- the query-encoder student (Atlas query-side fine-tuning) ----------------------------------------
@pytest.fixture(scope="module")
def query_trained(work, questions_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("qenc") / "query-encoder"
    result = train_reranker(work["pipeline"], questions_file, work["dev"], out,
                            config("ignored", student="query-encoder", train_candidates=5, max_steps=4), progress=False)
    return out, result["manifest"]


def test_query_encoder_artifact(query_trained, st_encoder):
    from odqa.lm.query_encoder import QueryEncoder, base_hash

    out, m = query_trained
    assert sorted(f.name for f in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "curves.png", "manifest.json"]
    # the base is the index's own encoder (not --base), and its weights are untouched
    assert (m["kind"], m["student"], m["base_model"]) == ("query_encoder", "query-encoder", st_encoder)
    assert m["base_model_hash"] == base_hash(QueryEncoder(st_encoder))
    assert m["lora"] == {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["query", "key", "value", "dense"]}
    assert m["scale"] > 0 and m["scale"] != pytest.approx(20.0)  # the scale is trained too
    assert m["data"]["labels"] == "positives hold an accepted answer (has_answer)"
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]
    assert b and any(t.abs().sum() > 0 for t in b)  # LoRA B starts at zero: the adapter learned


def test_query_encoder_ranker_in_a_pipeline(query_trained, work, flat_index):
    """The trained adapter ranks the join's candidates in a pipeline, with the scores the trainer's
    own dev evaluation computes."""
    import yaml

    import odqa
    from odqa.components.rankers import QueryEncoderRanker

    out, _ = query_trained
    data = yaml.safe_load(Path(work["pipeline"]).read_text())
    data["components"]["ranker"] = {"type": "odqa.components.rankers.QueryEncoderRanker",
                                    "init_parameters": {"model": str(out), "index_dir": flat_index, "candidates": 3}}
    data["connections"] = [c for c in data["connections"] if c["receiver"] != "packer.documents"] + [
        {"sender": "join.documents", "receiver": "ranker.documents"},
        {"sender": "ranker.documents", "receiver": "packer.documents"}]
    path = Path(work["pipeline"]).parent / "ranked-query.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _, outputs = odqa.load(path).ask_with_outputs("Who wrote Romeo and Juliet?")
    joined, ranked = outputs["join"]["documents"], outputs["ranker"]["documents"]
    assert sorted(d.id for d in ranked[:3]) == sorted(d.id for d in joined[:3])  # only the first 3 are re-ordered
    assert [d.id for d in ranked[3:]] == [d.id for d in joined[3:]]
    assert [d.score for d in ranked[:3]] == sorted((d.score for d in ranked[:3]), reverse=True)
    direct = QueryEncoderRanker(model=str(out), index_dir=flat_index, candidates=3)
    again = direct.run(query="Who wrote Romeo and Juliet?", documents=joined)["documents"]
    assert [(d.id, d.score) for d in again] == [(d.id, d.score) for d in ranked]
    assert QueryEncoderRanker.from_dict(direct.to_dict()).to_dict() == direct.to_dict()


def test_query_encoder_ranker_refuses_another_index(query_trained, tmp_path, corpus_jsonl, st_encoder_other, make_docs):
    from odqa.components.rankers import QueryEncoderRanker
    from odqa.errors import IndexMismatchError
    from odqa.index import build_index

    out, _ = query_trained
    other = build_index(corpus_jsonl, tmp_path / "other", encoder=st_encoder_other, progress=False)
    ranker = QueryEncoderRanker(model=str(out), index_dir=str(other))
    with pytest.raises(IndexMismatchError, match="was built with encoder .* set the retriever's encoder"):
        ranker.run(query="Who wrote Hamlet?", documents=make_docs(("0", "t", "x")))


def test_query_encoder_ranker_refuses_a_cross_encoder_artifact(trained, flat_index, make_docs):
    from odqa.components.rankers import QueryEncoderRanker

    out, _ = trained
    with pytest.raises(ArtifactMismatchError, match="is a 'reranker', not a 'query_encoder'"):
        QueryEncoderRanker(model=str(out), index_dir=flat_index).run(query="Who?", documents=make_docs(("0", "t", "x")))


def test_query_encoder_student_needs_a_dense_retriever(work, questions_file, flat_index, tmp_path):
    import yaml

    from odqa.errors import PipelineConfigError

    data = yaml.safe_load(Path(work["pipeline"]).read_text())
    del data["components"]["dense"]
    data["connections"] = [c for c in data["connections"] if not c["sender"].startswith("dense")]
    path = Path(work["pipeline"]).parent / "bm25-only.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PipelineConfigError, match="has no DenseRetriever; pass a hybrid or dense pipeline"):
        train_reranker(path, questions_file, work["dev"], tmp_path / "o",
                       config("ignored", student="query-encoder", train_candidates=5, max_steps=1), progress=False)


def test_resume_refuses_another_student(work, questions_file, bare_bert, tmp_path):
    out = tmp_path / "art"
    train_reranker(work["pipeline"], questions_file, work["dev"], out,
                   config(bare_bert, train_candidates=5, max_steps=1), progress=False)
    with pytest.raises(ArtifactMismatchError, match="student='cross-encoder'.*'query-encoder'.*drop --resume"):
        train_reranker(work["pipeline"], questions_file, work["dev"], out,
                       config(bare_bert, student="query-encoder", train_candidates=5), resume=True, progress=False)
