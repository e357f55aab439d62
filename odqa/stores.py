"""Put an odqa index into a Haystack document store, for pipelines that search it with the store's
own retriever (``pipelines/frozen_reader_qdrant.yml``: ``QdrantEmbeddingRetriever``).

Each passage becomes a Haystack ``Document`` with the index's id, its text as ``content``, its title
in ``meta["title"]`` (as odqa's retrievers give them, so the packer, the reader and the RRF join
treat both alike) and the index's stored vector (read back from FAISS: nothing is embedded again).
The store scores by inner product (``dot_product``), as the index does, so its scores are the
dense retriever's.

Qdrant (``pip install -e '.[qdrant]'``): local mode (``path``: in-process, no server; one client
at a time may open the directory) or a server or cluster (``url``; the API key, if any, from
``$QDRANT_API_KEY``). A rerun writes only the passages the collection does not hold yet, so a
killed export resumes where it stopped; ``recreate`` empties the collection first (after
rebuilding the index, whose passages a rerun would otherwise keep as they were).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from haystack import Document
from haystack.document_stores.types import DuplicatePolicy
from tqdm.auto import tqdm

from odqa.errors import IndexMismatchError, OdqaError, OutputExistsError, OutputLockedError, first_line
from odqa.index import open_index

STORES = ("qdrant",)
SIMILARITY = "dot_product"  # the index's inner product (DPR's); for normalized vectors it is the cosine
API_KEY_ENV = "QDRANT_API_KEY"
BATCH = 256  # passages per write: the unit of progress and of resume


@dataclass
class ExportResult:
    """What :func:`export_index` did."""

    store: str
    where: str  # the local directory or the server's URL
    collection: str
    passages: int  # the passages asked for (the whole index, or ``ids``)
    written: int
    already_there: int  # skipped: the collection held them (a resumed or repeated export)
    collection_count: int  # documents in the collection afterwards
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _qdrant():
    try:
        from haystack.utils import Secret
        from haystack_integrations.document_stores.qdrant import QdrantDocumentStore
    except ImportError:
        raise OdqaError("exporting to Qdrant needs the Qdrant integration; install it with "
                        "pip install -e '.[qdrant]' (make install does)") from None
    return QdrantDocumentStore, Secret


def _check_local_dir(path: Path) -> None:
    """Qdrant's local mode writes ``meta.json`` and ``collection/`` into its directory: refuse one
    that holds something else (an odqa index, say), rather than write into it."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--path '{path}' is a file; name a directory for the Qdrant store (new, or one "
                                "an earlier export made)")
    if path.is_dir() and any(path.iterdir()):
        try:
            json.loads((path / "meta.json").read_text(encoding="utf-8"))["collections"]
        except (OSError, ValueError, KeyError, TypeError):
            raise OutputExistsError(f"--path '{path}' exists and is not a Qdrant local store (no Qdrant meta.json); "
                                    "choose a new directory, e.g. indexes/wiki-vital-qdrant") from None


def qdrant_store(collection: str, dim: int, path: str | Path | None = None, url: str | None = None,
                 recreate: bool = False):
    """The ``QdrantDocumentStore`` an export writes to and a pipeline reads: local mode at ``path``, or
    the server at ``url`` (API key from ``$QDRANT_API_KEY``); exactly one of the two."""
    QdrantDocumentStore, Secret = _qdrant()
    if (path is None) == (url is None):
        raise OdqaError("name the Qdrant store with exactly one of --path DIR (local mode, in-process) or "
                        "--url URL (a Qdrant server or cluster)")
    # the client's version check runs in a thread and warns on stderr when the server is not there, after
    # or over odqa's own error line; a server it cannot work with fails on the first call instead
    where = {"path": str(path)} if path is not None else {
        "url": url, "api_key": Secret.from_env_var(API_KEY_ENV, strict=False),
        "client_kwargs": {"check_compatibility": False}}
    return QdrantDocumentStore(**where, index=collection, embedding_dim=dim, similarity=SIMILARITY,
                               recreate_index=recreate, return_embedding=False, progress_bar=False,
                               write_batch_size=BATCH)


def _open(store, where: str, collection: str, dim: int) -> int:
    """Open the store (creating the collection when it has none) and count its documents, with
    one-line errors that say what to do."""
    try:
        return store.count_documents()
    except RuntimeError as e:
        if "already accessed" in str(e):
            raise OutputLockedError(f"the Qdrant store '{where}' is open in another process (an odqa run or serve "
                                    "on a pipeline that uses it?); stop that process and export again, or export "
                                    "to a Qdrant server with --url") from None
        raise
    except ValueError as e:  # the collection exists with another vector size or similarity
        first = str(e).split(". ")[0]
        raise IndexMismatchError(f"{first} (Qdrant store '{where}'); this index has {dim}-d vectors scored by "
                                 f"{SIMILARITY}: pass --recreate to replace collection '{collection}', or choose "
                                 "another --collection") from None
    except Exception as e:  # noqa: BLE001 - a server that is down or refuses: qdrant_client and httpx types
        if store.url is None:
            raise
        raise OdqaError(f"cannot use the Qdrant server at '{where}': {first_line(e)}; check --url, that the server is "
                        f"running, and ${API_KEY_ENV} if it needs a key") from None


def _local_journal(store, collection: str, mode: str) -> None:
    """Set the SQLite journal of a local-mode collection: ``WAL`` for the export, ``DELETE`` (Qdrant's
    own) after it. Local mode commits every point on its own: in Qdrant's mode each commit waits on
    the disk (22-130 s for the 10,033 passages here, as busy as the disk was), in WAL mode with
    ``synchronous=NORMAL`` only checkpoints do (8.5 s), and a killed export still leaves a
    consistent file that the next run resumes. This reaches into qdrant-client's local mode (the
    version pyproject pins): if that changes, the export is only slower."""
    try:
        connection = store._client._client.collections[collection].storage.storage
        connection.execute(f"PRAGMA journal_mode={mode}")
        connection.execute(f"PRAGMA synchronous={'NORMAL' if mode == 'WAL' else 'FULL'}")
    except (AttributeError, KeyError, TypeError, sqlite3.Error):
        pass


def export_index(index_dir: str | Path, to: str = "qdrant", path: str | Path | None = None, url: str | None = None,
                 collection: str | None = None, recreate: bool = False, ids: list[str] | None = None,
                 progress: bool = True) -> ExportResult:
    """Write the passages of the odqa index at ``index_dir`` (all, or those with ``ids``), with their
    stored vectors, into collection ``collection`` (by default the index directory's name) of a
    document store; see the module's docstring."""
    if to not in STORES:
        raise OdqaError(f"unknown document store '{to}'; use one of {list(STORES)}")
    index = open_index(index_dir)
    passages = index.passages
    if ids is not None:
        rows = {p.id: p for p in passages}
        unknown = [i for i in ids if i not in rows]
        if unknown:
            raise IndexMismatchError(f"passage id '{unknown[0]}' is not in index '{index_dir}' ({len(unknown)} of "
                                     f"{len(ids)} unknown); export ids from this index")
        passages = [rows[i] for i in dict.fromkeys(ids)]
    collection = collection or Path(index.path).name
    dim = int(index.manifest["dim"])
    if path is not None:
        _check_local_dir(Path(path))
    store = qdrant_store(collection, dim, path=path, url=url, recreate=recreate)
    where = str(path if path is not None else url)
    start = time.perf_counter()
    written = 0
    try:
        _open(store, where, collection, dim)
        if path is not None:
            _local_journal(store, collection, "WAL")
        with tqdm(total=len(passages), desc=f"exporting to {to}", unit="psg", disable=not progress) as bar:
            for i in range(0, len(passages), BATCH):
                batch = passages[i:i + BATCH]
                vectors = index.vectors([p.id for p in batch])
                docs = [Document(id=p.id, content=p.text, meta={"title": p.title}, embedding=v.tolist())
                        for p, v in zip(batch, vectors)]
                # SKIP: passages the collection holds already are not written again (resume, rerun)
                written += store.write_documents(docs, policy=DuplicatePolicy.SKIP)
                bar.update(len(batch))
        count = store.count_documents()
    finally:
        if path is not None:
            _local_journal(store, collection, "DELETE")  # checkpoints: the file as Qdrant writes it
        store.close()  # local mode: releases the directory's lock
    return ExportResult(store=to, where=where, collection=collection, passages=len(passages), written=written,
                        already_there=len(passages) - written, collection_count=count,
                        seconds=round(time.perf_counter() - start, 2))
