"""odqa.runs: run files that are never truncated unless torn, outputs odqa may replace, and the
one-writer lock on an output."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from odqa.errors import OutputExistsError, OutputLockedError
from odqa.runs import EVAL_RUN_KIND, INDEX_KIND, OutputLock, check_replaceable, declared_kind, read_records


# --- run files -------------------------------------------------------------------------------
def test_a_torn_last_line_is_cut(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "answ')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_a_complete_last_record_gets_its_newline(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


@pytest.mark.parametrize("content", [b"my thesis\nchapter one\n", b'{"id": "a"}\nnot a record\n{"id": "b"}\n',
                                     b'{"no_id": 1}\n', b"\xff\xfe binary\n"])
def test_a_file_that_is_not_a_run_file_is_refused_and_left_alone(tmp_path, content):
    path = tmp_path / "thesis.txt"
    path.write_bytes(content)
    with pytest.raises(OutputExistsError, match=r"thesis\.txt' is not an odqa run file \(line \d+ .*choose another"):
        read_records(path)
    assert path.read_bytes() == content


def test_a_directory_is_not_a_run_file(tmp_path):
    with pytest.raises(OutputExistsError, match="is not a file"):
        read_records(tmp_path)


# --- what odqa may replace -------------------------------------------------------------------
def _dir_with(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    d = tmp_path / name
    d.mkdir()
    for rel, text in files.items():
        (d / rel).write_text(text, encoding="utf-8")
    return d


def test_replaceable_outputs(tmp_path):
    check_replaceable(tmp_path / "absent", (INDEX_KIND,), "an index")
    check_replaceable(_dir_with(tmp_path, "empty", {}), (INDEX_KIND,), "an index")
    index = _dir_with(tmp_path, "idx", {"manifest.json": json.dumps({"kind": INDEX_KIND})})
    check_replaceable(index, (INDEX_KIND,), "an index")
    run = _dir_with(tmp_path, "run", {"run.json": json.dumps({"kind": EVAL_RUN_KIND})})
    check_replaceable(run, (EVAL_RUN_KIND,), "an evaluation run")
    old_run = _dir_with(tmp_path, "old_run", {"run.json": json.dumps({"pipeline_sha256": "x"})})  # before "kind"
    assert declared_kind(old_run) == EVAL_RUN_KIND
    artifact = _dir_with(tmp_path, "art", {"manifest.json": json.dumps({"kind": "soft-prompt"})})
    check_replaceable(artifact, None, "a trained artifact")


@pytest.mark.parametrize("files, found", [
    ({"thesis.txt": "x"}, "not made by odqa"),
    ({"manifest.json": "{not json"}, "not made by odqa"),
    ({"manifest.json": json.dumps({"kind": "soft-prompt"})}, "an odqa 'soft-prompt'"),
])
def test_anything_else_is_refused_without_suggesting_force(tmp_path, files, found):
    d = _dir_with(tmp_path, "precious", files)
    with pytest.raises(OutputExistsError) as e:
        check_replaceable(d, (INDEX_KIND,), "an index")
    msg = str(e.value)
    assert f"'{d}' exists and is {found}" in msg and "choose another --out" in msg and "--force" not in msg


def test_an_index_or_a_run_is_not_a_trained_artifact(tmp_path):
    for kind in (INDEX_KIND, EVAL_RUN_KIND):
        d = _dir_with(tmp_path, kind, {"manifest.json": json.dumps({"kind": kind})})
        with pytest.raises(OutputExistsError, match=f"is an odqa '{kind}'"):
            check_replaceable(d, None, "a trained artifact")


def test_a_file_is_not_replaced_by_a_directory(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_replaceable(f, None, "a trained artifact")


# --- the lock --------------------------------------------------------------------------------
def test_a_second_writer_is_refused_with_the_owner(tmp_path, hold_lock):
    target = tmp_path / "out"
    pid = hold_lock(target).pid
    with pytest.raises(OutputLockedError, match=rf"'{target}' is being written by another odqa process \(PID {pid} "):
        with OutputLock(target):
            pass


def test_the_lock_is_free_again_after_a_clean_exit(tmp_path):
    target = tmp_path / "out"
    with OutputLock(target) as lock:
        assert lock.path.exists() and json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists()  # a clean exit leaves no lock file
    with OutputLock(target):
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_said(tmp_path, caplog):
    target = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / ".out.lock"
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": "somewhere"}))  # what a kill -9 leaves
    with caplog.at_level(logging.WARNING, logger="odqa"):
        with OutputLock(target):
            assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"took over the lock on '{target}' left by PID {dead.pid} on somewhere (no longer running)" in caplog.text


def test_a_killed_holder_leaves_a_lock_the_next_writer_takes(tmp_path, caplog, hold_lock):
    target = tmp_path / "out"
    proc = hold_lock(target)
    proc.kill()
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="odqa"), OutputLock(target):
        pass
    assert f"left by PID {proc.pid}" in caplog.text
