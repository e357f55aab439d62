"""Dense retrieval's answer-in-top-20 on every `fanoutqa-wiki` question (all splits), per index, and
whether the first two indexes' FAISS and passage files are byte-identical: the check that a Ray
build (`odqa index build --engine ray`) gives the single-process build's index.

    python bench/dense_top20.py /tmp/wv-local indexes/wiki-vital-ray
"""
from __future__ import annotations

import filecmp
import sys

from odqa.components.retrievers import DenseRetriever
from odqa.data.questions import load_questions
from odqa.metrics import has_answer, percent


def main(indexes: list[str]) -> int:
    if len(indexes) < 2:
        print("usage: python bench/dense_top20.py INDEX_A INDEX_B [INDEX ...]", file=sys.stderr)
        return 2
    questions = load_questions("fanoutqa-wiki")
    for path in indexes:
        retriever = DenseRetriever(index_dir=path, top_k=20)
        found = retriever.run_batch([q.question for q in questions])["documents"]
        hits = [any(has_answer(f"{d.meta['title']}\n{d.content}", q.answers) for d in docs)
                for q, docs in zip(questions, found)]
        print(f"{path}: {len(questions)} questions, answer in the top 20 for {percent(hits):.2f}%")
    for name in ("dense.faiss", "passages.jsonl"):
        same = filecmp.cmp(f"{indexes[0]}/{name}", f"{indexes[1]}/{name}", shallow=False)
        print(f"{name}: {'identical' if same else 'DIFFERENT'} in {indexes[0]} and {indexes[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
