"""odqa.data.corpus: jsonl and DPR tsv readers, their errors (with line numbers), ids and hashing."""

from __future__ import annotations

import json

import pytest

from odqa.data.corpus import Passage, corpus_hash, read_corpus
from odqa.errors import InputFormatError, ResourceNotFoundError, TextEncodingError

from conftest import CORPUS


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_read_jsonl(corpus_jsonl):
    passages = read_corpus(corpus_jsonl)
    assert len(passages) == len(CORPUS)
    assert passages[0] == Passage(id="p0", title="Romeo and Juliet", text=CORPUS[0]["text"])
    assert [p.id for p in passages] == [p["id"] for p in CORPUS]


def test_read_tsv_matches_jsonl(corpus_tsv, corpus_jsonl):
    tsv, jsonl = read_corpus(corpus_tsv), read_corpus(corpus_jsonl)
    assert tsv == jsonl
    assert corpus_hash(tsv) == corpus_hash(jsonl)


def test_jsonl_optional_fields_and_blank_lines(tmp_path):
    path = _write(tmp_path, "c.jsonl", '{"contents": "first text"}\n\n{"id": 7, "title": "T", "text": "second"}\r\n')
    passages = read_corpus(str(path))
    # no id -> the line number; "contents" is accepted for "text"; CRLF endings are stripped
    assert passages == [Passage("1", "", "first text"), Passage("7", "T", "second")]
    assert passages[0].retrieval_text() == "first text"
    assert passages[1].retrieval_text() == "T\nsecond"


def test_tsv_unquotes_csv_style_fields(tmp_path):
    path = _write(tmp_path, "c.tsv", 'id\ttext\ttitle\n1\t"He said ""hi"" loudly"\t"Quote"\n')
    (p,) = read_corpus(str(path))
    assert p.text == 'He said "hi" loudly'
    assert p.title == "Quote"


@pytest.mark.parametrize(
    "line3, fragment",
    [
        ('{"id": "c", "text": ', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"id": "c", "title": "x"}', "'text'"),
        ('{"id": "c", "text": "   "}', "'text'"),
        ('{"id": "c", "text": "ok", "title": 5}', "'title'"),
    ],
)
def test_jsonl_malformed_line_names_the_line(tmp_path, line3, fragment):
    good = json.dumps({"id": "a", "text": "alpha"}) + "\n" + json.dumps({"id": "b", "text": "beta"}) + "\n"
    path = _write(tmp_path, "bad.jsonl", good + line3 + "\n")
    with pytest.raises(InputFormatError) as e:
        read_corpus(str(path))
    msg = str(e.value)
    assert f"{path}:3:" in msg
    assert fragment in msg


def test_jsonl_non_utf8_names_the_line(tmp_path):
    data = b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n'
    path = _write(tmp_path, "latin1.jsonl", data)
    with pytest.raises(TextEncodingError) as e:
        read_corpus(str(path))
    msg = str(e.value)
    assert ":2:" in msg
    assert "UTF-8" in msg
    assert "0xe9" in msg
    assert isinstance(e.value, InputFormatError)  # one hierarchy: a bad encoding is a bad input file


def test_tsv_non_utf8_names_the_line(tmp_path):
    data = b"id\ttext\ttitle\n1\tfine\tA\n2\tna\xefve\tB\n"
    path = _write(tmp_path, "latin1.tsv", data)
    with pytest.raises(TextEncodingError, match=r":3:"):
        read_corpus(str(path))


@pytest.mark.parametrize("header", ["id\ttitle\ttext", "id,text,title", "text\tid\ttitle"])
def test_tsv_bad_header(tmp_path, header):
    path = _write(tmp_path, "c.tsv", header + "\n1\tsome text\tTitle\n")
    with pytest.raises(InputFormatError) as e:
        read_corpus(str(path))
    assert ":1:" in str(e.value)
    assert "id<TAB>text<TAB>title" in str(e.value)


def test_tsv_empty_file(tmp_path):
    path = _write(tmp_path, "c.tsv", "")
    with pytest.raises(InputFormatError, match="empty file"):
        read_corpus(str(path))


@pytest.mark.parametrize("row", ["2\tonly two fields", "2\ttext\ttitle\textra", "\ttext\ttitle", "2\t \ttitle"])
def test_tsv_malformed_row_names_the_line(tmp_path, row):
    path = _write(tmp_path, "c.tsv", "id\ttext\ttitle\n1\tgood text\tGood\n" + row + "\n")
    with pytest.raises(InputFormatError, match=r"c\.tsv:3:"):
        read_corpus(str(path))


@pytest.mark.parametrize("suffix", ["jsonl", "tsv"])
def test_duplicate_ids(tmp_path, suffix):
    if suffix == "jsonl":
        content = '{"id": "x", "text": "one"}\n{"id": "y", "text": "two"}\n{"id": "x", "text": "three"}\n'
    else:
        content = "id\ttext\ttitle\nx\tone\tA\ny\ttwo\tB\nx\tthree\tC\n"
    path = _write(tmp_path, f"dup.{suffix}", content)
    with pytest.raises(InputFormatError) as e:
        read_corpus(str(path))
    assert "'x'" in str(e.value) and "twice" in str(e.value)
    first, again = (1, 3) if suffix == "jsonl" else (2, 4)  # the tsv has a header line
    assert f"dup.{suffix}:{again}: passage id 'x' appears twice (first at line {first})" in str(e.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ResourceNotFoundError, match="neither"):
        read_corpus(str(tmp_path / "nope.jsonl"))
    path = _write(tmp_path, "corpus.csv", "id,text\n1,x\n")
    with pytest.raises(InputFormatError, match="unknown extension"):
        read_corpus(str(path))


def test_corpus_without_passages(tmp_path):
    path = _write(tmp_path, "empty.jsonl", "\n\n")
    with pytest.raises(InputFormatError, match="no passages"):
        read_corpus(str(path))


def test_corpus_hash_is_content_sensitive(corpus_jsonl):
    passages = read_corpus(corpus_jsonl)
    h = corpus_hash(passages)
    assert h.startswith("sha256:") and len(h) == len("sha256:") + 64
    assert corpus_hash(list(passages)) == h
    changed = [Passage(passages[0].id, passages[0].title, passages[0].text + "!")] + passages[1:]
    assert corpus_hash(changed) != h
    assert corpus_hash(list(reversed(passages))) != h
