"""Passages: the bundled wiki, DPR ``psgs_w100.tsv`` and jsonl files -> :class:`Passage`.

Formats
-------
``wiki-vital``  the bundled 10,033 Wikipedia lead paragraphs (ids ``"0"``..``"10032"``)
``*.tsv``       DPR's ``psgs_w100.tsv``: a header line, then ``id<TAB>text<TAB>title``
``*.jsonl``     one object per line with ``text`` (or ``contents``), optional ``id`` and ``title``

Every malformed line raises :class:`~odqa.errors.InputFormatError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from odqa.errors import InputFormatError, ResourceNotFoundError, TextEncodingError
from odqa.resources import bundled_data_path


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def retrieval_text(self) -> str:
        """What BM25 and single-tower dense encoders index: the title, then the text (as DPR does)."""
        return f"{self.title}\n{self.text}" if self.title else self.text


def decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file, naming the line of any bad byte."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise TextEncodingError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
                ) from None


def read_json(path: Path, error: type[InputFormatError] = InputFormatError, expected: str = "") -> object:
    """A whole JSON file; a bad byte or bad JSON names the file, line and column (``expected``: the format)."""
    text = "\n".join(line for _, line in decode_lines(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = f"; expected {expected}" if expected else ""
        raise error(f"{path}:{e.lineno}: invalid JSON at column {e.colno} ({e.msg}){hint}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` from a jsonl file; bad lines name the file and line."""
    for lineno, line in decode_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise InputFormatError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield lineno, rec


# Each reader yields (line number, passage); the line number names a passage in error messages.
def _read_wiki_vital() -> Iterator[tuple[int, Passage]]:
    path = bundled_data_path("wiki-vital")
    data = json.loads(path.read_text(encoding="utf-8"))
    for i, (title, rec) in enumerate(data.items()):
        yield i + 1, Passage(id=str(i), title=rec.get("title") or title, text=rec["extract"].strip())


def _read_tsv(path: Path) -> Iterator[tuple[int, Passage]]:
    lines = decode_lines(path)
    header = next(lines, None)
    if header is None:
        raise InputFormatError(f"{path}: empty file; expected a header `id<TAB>text<TAB>title` and passages")
    cols = header[1].split("\t")
    if cols != ["id", "text", "title"]:
        raise InputFormatError(
            f"{path}:1: header is {cols!r}; DPR passage files start with `id<TAB>text<TAB>title`"
        )
    for lineno, line in lines:
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise InputFormatError(
                f"{path}:{lineno}: expected 3 tab-separated fields (id, text, title), found {len(parts)}"
            )
        pid, text, title = parts
        if not pid.strip() or not text.strip():
            raise InputFormatError(f"{path}:{lineno}: empty id or text")
        # psgs_w100.tsv quotes fields that contain quotes, CSV-style
        if len(text) > 1 and text[0] == text[-1] == '"':
            text = text[1:-1].replace('""', '"')
        if len(title) > 1 and title[0] == title[-1] == '"':
            title = title[1:-1].replace('""', '"')
        yield lineno, Passage(id=pid, title=title, text=text)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Passage]]:
    for lineno, rec in iter_jsonl(path):
        text = rec.get("text", rec.get("contents"))
        if not isinstance(text, str) or not text.strip():
            raise InputFormatError(f"{path}:{lineno}: missing or empty 'text' field")
        title = rec.get("title", "")
        if not isinstance(title, str):
            raise InputFormatError(f"{path}:{lineno}: 'title' must be a string")
        yield lineno, Passage(id=str(rec.get("id", lineno)), title=title, text=text)


def read_corpus(spec: str) -> list[Passage]:
    """Read a corpus by bundled name or file path (see module docstring for formats)."""
    if spec == "wiki-vital":
        numbered = list(_read_wiki_vital())
    else:
        path = Path(spec)
        if not path.exists():
            raise ResourceNotFoundError(
                f"corpus '{spec}' is neither the bundled 'wiki-vital' nor an existing file"
            )
        if path.suffix == ".tsv":
            numbered = list(_read_tsv(path))
        elif path.suffix in (".jsonl", ".json"):
            numbered = list(_read_jsonl(path))
        else:
            raise InputFormatError(
                f"corpus file '{spec}' has an unknown extension; use .tsv (DPR psgs_w100) or .jsonl"
            )
    if not numbered:
        raise InputFormatError(f"corpus '{spec}' holds no passages")
    seen: dict[str, int] = {}
    for lineno, p in numbered:
        if p.id in seen:
            raise InputFormatError(f"{spec}:{lineno}: passage id '{p.id}' appears twice (first at line "
                                   f"{seen[p.id]}); ids must be unique")
        seen[p.id] = lineno
    return [p for _, p in numbered]


def corpus_hash(passages: list[Passage]) -> str:
    """A content hash of the passages (ids, titles and texts, in order)."""
    h = hashlib.sha256()
    for p in passages:
        h.update(json.dumps([p.id, p.title, p.text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
