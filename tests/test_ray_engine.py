"""odqa.ray_engine on a real local Ray runtime (2 CPUs, bound to 127.0.0.1, no dashboard, no usage
reports): a Ray index build and a Ray evaluation give what the single-process path gives, resume
from what was written, and bad inputs are one clear error. One runtime serves the module (Ray
takes seconds to start); it is stopped at the end and leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import odqa.encoders
import odqa.index
from odqa.cli import main
from odqa.data.question import Question
from odqa.errors import EmptyQuestionError, OdqaError
from odqa.eval import harness as evaluation
from odqa.index import build_index, open_index
from odqa.ray_engine import RayEngine, import_ray
from conftest import CORPUS

# Ray Data reads deprecated settings of its own when it copies its context
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

QUESTIONS = [
    Question(id="q1", question="Who wrote Romeo and Juliet?", answers=["William Shakespeare"]),
    Question(id="q2", question="What is the capital of Australia?", answers=["Canberra"]),
    Question(id="q3", question="Who painted the Mona Lisa?", answers=["Leonardo da Vinci"]),
    Question(id="q4", question="Which planet is known as the Red Planet?", answers=["Mars"]),
]


def one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


# --- bad inputs: no runtime needed (these run before the module's runtime starts) -----------------
def test_an_address_nobody_answers_is_one_clear_error():
    started = time.monotonic()
    with pytest.raises(OdqaError, match=r"--address 127\.0\.0\.1:1: no Ray cluster answers there .*ray start "
                                        r"--head.*drop --address"):
        with RayEngine(address="127.0.0.1:1"):
            pass
    assert time.monotonic() - started < 30  # Ray alone would retry for many minutes
    assert "ray" not in sys.modules  # refused before Ray was imported


@pytest.mark.parametrize("address", ["nowhere", "host:port", "http://x:1", ""])
def test_a_malformed_address_is_refused(address):
    with pytest.raises(OdqaError, match=f"--address '{address}' is not a Ray cluster address; pass 'auto'"):
        RayEngine(address=address)


@pytest.mark.parametrize("kwargs, message", [
    ({"actors": 0}, "the number of Ray actors .* must be at least 1, got 0"),
    ({"gpus_per_actor": -1}, "--gpus-per-encoder must be 0 or more, got -1"),
])
def test_bad_engine_settings(kwargs, message):
    with pytest.raises(OdqaError, match=message):
        RayEngine(**kwargs)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(OdqaError, match=r"--engine ray needs Ray.*install odqa's 'ray' extra: pip install -c "
                                        r"constraints.txt -e '\.\[ray\]', or use --engine local"):
        import_ray()


@pytest.mark.parametrize("flags, message", [
    (["--num-encoders", "0"], "argument --num-encoders: must be a whole number of at least 1, got '0'"),
    (["--gpus-per-encoder", "-1"], "argument --gpus-per-encoder: must be a number of at least 0, got '-1'"),
    (["--engine", "spark"], "argument --engine: invalid choice: 'spark'"),
])
def test_cli_build_refuses_bad_ray_options(capsys, tmp_path, corpus_jsonl, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["index", "build", "--corpus", corpus_jsonl, "--out", str(tmp_path / "idx"), "--engine", "ray", *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["index", "build", "--corpus", "c.jsonl", "--out", "idx", "--num-encoders", "2"],
     "--num-encoders applies to --engine ray only; add --engine ray, or drop --num-encoders"),
    (["index", "build", "--corpus", "c.jsonl", "--out", "idx", "--gpus-per-encoder", "1"],
     "--gpus-per-encoder applies to --engine ray only"),
    (["eval", "--pipeline", "p.yml", "--questions", "q.jsonl", "--out", "o", "--address", "auto"],
     "--address applies to --engine ray only"),
    (["index", "build", "--corpus", "c.jsonl", "--out", "idx", "--engine", "ray", "--address", "head"],
     "--address 'head' is not a Ray cluster address"),
    (["index", "build", "--corpus", "c.jsonl", "--out", "idx", "--engine", "ray", "--address", "127.0.0.1:1"],
     "--address 127.0.0.1:1: no Ray cluster answers there"),
])
def test_cli_ray_option_errors_are_one_line(capsys, argv, message):
    assert message in one_error_line(capsys, main(argv))


# --- one local runtime for the rest ------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_runtime():
    """A local Ray runtime with 2 CPUs whose files live in a temp dir under /tmp; stopped (and checked
    gone: no process started with its session dir) at the end."""
    temp_dir = tempfile.mkdtemp(prefix="odqa-ray-", dir="/tmp")
    token = Path.home() / ".ray" / "auth_token"
    token_before = token.stat().st_mtime_ns if token.exists() else None
    try:
        with RayEngine(num_cpus=2, temp_dir=temp_dir) as engine:  # odqa imports Ray first: its settings apply
            import ray

            assert ray.is_initialized() and engine.actors == 2  # one actor per CPU by default
            assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
            yield engine
        assert not ray.is_initialized()
        deadline = time.monotonic() + 20
        while _processes_under(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_under(temp_dir), "Ray left processes behind"
        # the runtime's token was this process's own: none written to ~/.ray
        assert (token.stat().st_mtime_ns if token.exists() else None) == token_before
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _processes_under(temp_dir: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def test_a_runtime_that_cannot_hold_the_pool_is_refused(ray_runtime):
    with pytest.raises(OdqaError, match=r"3 Ray actors \(one CPU each\) do not fit the local Ray runtime \(2 CPUs, "
                                        r"0 GPUs\); pass --num-encoders/--num-actors 2 or fewer"):
        with RayEngine(actors=3):
            pass
    with pytest.raises(OdqaError, match="--gpus-per-encoder 1: the local Ray runtime has 0 GPUs; drop "
                                        "--gpus-per-encoder"):
        with RayEngine(gpus_per_actor=1):
            pass


def _vectors(index_dir) -> np.ndarray:
    index = open_index(index_dir).dense()
    return index.reconstruct_n(0, index.ntotal)


def test_ray_build_equals_the_local_build_and_resumes(ray_runtime, capsys, tmp_path, monkeypatch, corpus_jsonl,
                                                      st_encoder, flat_index):
    """Chunks of 8 passages (4 chunks) over 2 encoder actors; chunk 0 is already saved by a killed local
    build, so `odqa index build --engine ray` embeds only the other three; the index equals the local one."""
    monkeypatch.setattr(odqa.index, "CHUNK", 8)
    real = odqa.encoders.load_encoder(st_encoder)

    class DiesOnSecondChunk:
        calls = 0

        def encode_passages(self, *args):
            DiesOnSecondChunk.calls += 1
            if DiesOnSecondChunk.calls == 2:
                raise KeyboardInterrupt("simulated kill")
            return real.encode_passages(*args)

        def __getattr__(self, name):
            return getattr(real, name)

    out = tmp_path / "idx"
    monkeypatch.setattr(odqa.encoders, "load_encoder", lambda name, query_name=None: DiesOnSecondChunk())
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_jsonl, out, encoder=st_encoder, progress=False)
    assert sorted(p.name for p in (tmp_path / ".idx.partial" / "emb").iterdir()) == ["00000.npy"]

    monkeypatch.setattr(odqa.encoders, "load_encoder", lambda name, query_name=None: real)
    saved = []
    real_save = odqa.index._save_chunk
    monkeypatch.setattr(odqa.index, "_save_chunk", lambda partial, i, emb: saved.append(i) or real_save(partial, i, emb))
    assert main(["index", "build", "--corpus", corpus_jsonl, "--out", str(out), "--encoder", st_encoder,
                 "--engine", "ray", "--num-encoders", "2"]) == 0
    assert f"built {out}: {len(CORPUS)} passages" in capsys.readouterr().out
    assert sorted(saved) == [1, 2, 3]  # written by this process, as the actors returned them

    local = Path(flat_index)
    assert (out / "passages.jsonl").read_bytes() == (local / "passages.jsonl").read_bytes()  # ids and order
    assert [p.id for p in open_index(out).passages] == [p["id"] for p in CORPUS]
    np.testing.assert_allclose(_vectors(out), _vectors(local), rtol=0, atol=1e-6)
    for f in sorted((local / "bm25").iterdir()):
        assert (out / "bm25" / f.name).read_bytes() == f.read_bytes()
    assert json.loads((out / "manifest.json").read_text())["count"] == len(CORPUS)
    assert not (tmp_path / ".idx.partial").exists()
    import ray

    assert ray.is_initialized()  # the module's runtime was used, and left running for the next test


@pytest.fixture(scope="module")
def qa(pipeline_yaml):
    return odqa.load(str(pipeline_yaml))


def _records(run: Path) -> list[dict]:
    """The records of a run, without their timings (which differ run to run)."""
    return [{k: v for k, v in json.loads(line).items() if k != "timings"}
            for line in (run / "predictions.jsonl").read_text().splitlines()]


def test_ray_eval_equals_the_local_eval_and_resumes(ray_runtime, qa, tmp_path):
    """metrics.json (quality metrics only: timings go to timings.json) is byte-identical to a single-process
    run's, and so are the records, in question order, timings aside. The Ray run resumes one that a
    local run began, and decodes in batches of 2 (the same answers as one by one)."""
    local = tmp_path / "local"
    evaluation.evaluate(qa, QUESTIONS, local, progress=False)
    run = tmp_path / "ray"
    run.mkdir()
    shutil.copy(local / "run.json", run / "run.json")
    (run / "predictions.jsonl").write_text((local / "predictions.jsonl").read_text().splitlines()[0] + "\n")
    metrics = evaluation.evaluate(qa, QUESTIONS, run, progress=False, batch_size=2, engine=ray_runtime)
    assert (run / "metrics.json").read_bytes() == (local / "metrics.json").read_bytes()
    assert metrics == json.loads((local / "metrics.json").read_text())
    assert _records(run) == _records(local)
    assert "reader" in json.loads((run / "timings.json").read_text())


def test_an_actors_error_reaches_the_caller_as_itself(ray_runtime):
    """An odqa error an actor raises is raised here as itself, one line; any other error (here one
    from making the actor, as a node without odqa's dependencies gives) is named in one odqa error."""

    class Fails:  # defined here, so Ray ships it by value
        def __init__(self, where):
            if where == "init":
                import odqa_no_such_module  # noqa: F401

        def __call__(self, batch):
            raise EmptyQuestionError("the question is empty ('  '); pass a non-empty question")

    with pytest.raises(EmptyQuestionError, match=r"^the question is empty \('  '\); pass a non-empty question$"):
        list(ray_runtime.map(Fails, ("call",), [{"x": 1}]))
    with pytest.raises(OdqaError, match=r"^a Ray actor failed \(ModuleNotFoundError: No module named "
                                        r"'odqa_no_such_module'\); check that every node has odqa installed") as e:
        list(ray_runtime.map(Fails, ("init",), [{"x": 1}]))
    assert "\n" not in str(e.value)
