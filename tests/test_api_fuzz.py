"""Fuzzing the two doors into odqa.api: the question path and the pipeline loader.

A few hundred generated inputs each (seeded, so a failure reproduces): random Unicode, control
characters, lone surrogates, very long strings, things that are not strings; random YAML
structures, mutated pipelines and damaged files. Every input must end in an answer or a typed
:class:`~odqa.errors.OdqaError`, never another exception, and each within a few seconds.
"""

from __future__ import annotations

import random
import time

import pytest
import yaml

import odqa
from odqa.api import Answer, FailedAnswer, QA
from odqa.errors import OdqaError

SECONDS = 5  # the most one input may take

# character pools that have broken text handling somewhere before
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "?!.,;:'\"()[]{}<>-_/\\|@#$%^&*+=~`",
    " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2028\u2029\u202f\u3000",
    "".join(map(chr, range(0x00, 0x20))) + "\x7f" + "".join(map(chr, range(0x80, 0xA0))),
    "\ud800\udbff\udc00\udfff",  # lone surrogates: what undecodable argv bytes become
    "\u0301\u0308\u20dd\u200b\u200c\u200d\u2060\ufeff\u202e\u061c",  # combining, zero-width, bidi
    "日本語中文한국어ไทยעבריתالعربيةΕλληνικάРусский",
    "\U0001F600\U0001F914\U0001F1FA\U0001F1F8\U0001F9D1\u200d\U0001F680\U00010348\U0010FFFF",
    "Who wrote Romeo and Juliet? What is the capital of Australia? Mars Paris ",
]


def _random_text(rng: random.Random) -> str:
    size = rng.choice([0, 1, 2, 5, 12, 40, 80] * 6 + [600, 3000, 20000])
    if rng.random() < 0.15:  # code points from anywhere in the range
        return "".join(chr(rng.randrange(0x110000)) for _ in range(size))
    pools = rng.sample(POOLS, rng.randint(1, 4))
    return "".join(rng.choice(rng.choice(pools)) for _ in range(size))


def _questions(n: int, seed: int = 0) -> list[object]:
    rng = random.Random(seed)
    odd = [None, 0, 1.5, True, b"Who wrote Hamlet?", ["Who wrote Hamlet?"], {"q": "x"}, object()]
    return odd + [_random_text(rng) for _ in range(n - len(odd))]


@pytest.fixture(scope="module")
def qa(pipeline_yaml) -> QA:
    qa = odqa.load(str(pipeline_yaml))
    qa.warm_up()
    return qa


def test_questions_end_in_an_answer_or_a_typed_error(qa):
    answered = refused = 0
    for i, question in enumerate(_questions(300)):
        start = time.perf_counter()
        try:
            result = qa.ask(question)
        except OdqaError:
            refused += 1
        else:
            assert isinstance(result, Answer) and isinstance(result.answer, str), f"input {i}: {question!r:.80}"
            answered += 1
        assert time.perf_counter() - start < SECONDS, f"input {i} took too long: {question!r:.80}"
    assert answered > 50 and refused > 50  # the generator reaches both outcomes


def test_ask_many_gives_one_result_per_generated_question(qa):
    questions = _questions(60, seed=1)
    results = qa.ask_many(questions, progress=False)
    assert len(results) == len(questions)
    for q, r in zip(questions, results):
        assert isinstance(r, (Answer, FailedAnswer))
        assert r.question is q if isinstance(r, FailedAnswer) else isinstance(r.question, str)


# --- pipeline files ------------------------------------------------------------------------------
TYPES = [
    "odqa.components.retrievers.BM25Retriever", "odqa.components.packing.ContextPacker",
    "odqa.components.readers.FrozenLMReader", "odqa.components.NoSuch", "odqa.cli.main", "odqa.errors.OdqaError",
    "haystack.components.joiners.document_joiner.DocumentJoiner", "haystack.Pipeline", "haystack_integrations.X",
    "this.X", "os.system", "subprocess.Popen", "builtins.eval", "X", "", ".", "..X", "odqa..X", "a b.C",
    "odqa.components.readers.FrozenLMReader\n", 7, None, [], {},
]


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -1, 2**70, 3.5, float("inf"), True])
    if kind == 2:
        return rng.choice(TYPES)
    if kind in (3, 4):
        return _random_text(rng)[:50]
    if kind in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["type", "init_parameters", "components", "connections", "sender", "receiver",
                        "index_dir", "model", "top_k", _random_text(rng)[:10]]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _mutate(rng: random.Random, data):
    """``data`` with one random change somewhere inside it."""
    if isinstance(data, dict) and data and rng.random() < 0.9:
        key = rng.choice(list(data))
        if rng.random() < 0.15:
            return {k: v for k, v in data.items() if k != key}
        return {**data, key: _mutate(rng, data[key])}
    if isinstance(data, list) and data and rng.random() < 0.9:
        i = rng.randrange(len(data))
        return data[:i] + [_mutate(rng, data[i])] + data[i + 1:]
    return _random_value(rng)


def _pipeline_texts(base: dict, base_text: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.choices(range(5), weights=[15, 25, 35, 15, 10])[0]
        if kind == 0:  # any structure
            texts.append(yaml.safe_dump(_random_value(rng), allow_unicode=True))
        elif kind == 1:  # pipeline-shaped, random inside
            components = {_random_text(rng)[:12] or "c": {"type": rng.choice(TYPES),
                                                          "init_parameters": _random_value(rng, 3)}
                          for _ in range(rng.randint(1, 4))}
            texts.append(yaml.safe_dump({"components": components, "connections": _random_value(rng, 2)},
                                        allow_unicode=True))
        elif kind == 2:  # the real pipeline, changed in one to three places
            data = base
            for _ in range(rng.randint(1, 3)):
                data = _mutate(rng, data)
            texts.append(yaml.safe_dump(data, allow_unicode=True))
        elif kind == 3:  # the real file, cut or with junk spliced in
            cut = rng.randrange(len(base_text))
            junk = rng.choice(["", "&a ", "*a", "!!python/object/apply:os.system ['echo x']", "{{", "\t", "\x00",
                               ": :", "- [", "%YAML 9.9\n", "<<: *a\n", _random_text(rng)[:30]])
            texts.append(base_text[:cut] + junk + (base_text[cut:] if rng.random() < 0.5 else ""))
        else:  # not YAML at all
            texts.append(_random_text(rng))
    return texts


def test_pipeline_files_load_or_fail_with_a_typed_error(tmp_path, pipeline_yaml):
    base_text = pipeline_yaml.read_text(encoding="utf-8")
    base = yaml.safe_load(base_text)
    loaded = refused = 0
    for i, text in enumerate(_pipeline_texts(base, base_text, 250)):
        path = tmp_path / f"p{i}.yml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        start = time.perf_counter()
        try:
            qa = QA.load(path)
        except OdqaError:
            refused += 1
        else:
            assert isinstance(qa, QA)
            loaded += 1
        assert time.perf_counter() - start < SECONDS, f"file {i} took too long:\n{text[:300]}"
    assert refused > 100 and loaded + refused == 250
