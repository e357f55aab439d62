"""odqa.lm.generation: the prefix KV cache and the greedy loop match ``model.generate`` exactly.

The conftest's tiny Llama (init std 0.02) repeats one token forever, which would let a wrong
position or a lost prefix pass unseen; these tests use the same architecture and tokenizer with
init std 0.3, whose greedy output changes at every step.
"""

from __future__ import annotations

import copy

import pytest
import torch

from odqa.errors import PipelineConfigError
from odqa.lm.generation import PrefixCache, cached_prefix, greedy_generate, greedy_generate_batch
from odqa.lm.prompting import encode_parts, get_template
from odqa.lm.soft_prompt import SoftPrompt

from conftest import HIDDEN

QUESTION = "Who wrote Romeo and Juliet?"
PASSAGES = [("Romeo and Juliet", "Romeo and Juliet is a tragedy written by William Shakespeare."),
            ("Canberra", "Canberra is the capital city of Australia.")]


@pytest.fixture(scope="module")
def model(backbone):
    from transformers import LlamaForCausalLM

    from odqa.lm.backbone import freeze

    config = copy.deepcopy(backbone.model.config)
    config.initializer_range = 0.3
    torch.manual_seed(11)
    return freeze(LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def soft():
    torch.manual_seed(5)
    return SoftPrompt(torch.randn(4, HIDDEN)).eval().requires_grad_(False)


def reference(model, ids: list[int], soft, max_new_tokens: int, stop_ids: list[int]):
    """The uncached path: ``model.generate`` on the whole input, log-probs from compute_transition_scores."""
    input_ids = torch.tensor([ids])
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop_ids or None,
                  pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.inference_mode():
        if soft is not None:
            embeds = soft(model.get_input_embeddings()(input_ids))
            out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                 **kwargs)
            new = out.sequences[0]
        else:
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            new = out.sequences[0, input_ids.shape[1]:]
        logp = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
    return [int(t) for t in new], [float(x) for x in logp]


def _parts(backbone, template: str) -> tuple[list[int], list[int]]:
    return encode_parts(backbone.tokenizer, get_template(template), QUESTION, PASSAGES)


CASES = [(t, soft, cached) for t in ("qa-completion", "span-chat", "qa") for soft in (False, True)
         for cached in (False, True) if (t, soft, cached) != ("qa", False, True)]  # that one has nothing to cache


@pytest.mark.parametrize("template, with_soft, with_prefix", CASES)
def test_greedy_generate_matches_generate(backbone, model, soft, template, with_soft, with_prefix):
    """Our loop gives generate's tokens, with the model's own head and with the screened head; the
    own head's log-probs are generate's, the screened head's within its int8 normaliser's error."""
    sp = soft if with_soft else None
    prefix_ids, body_ids = _parts(backbone, template)
    ids = prefix_ids + body_ids
    want, want_logp = reference(model, ids, sp, 8, [])
    for screen in (False, True):
        if with_prefix:
            prefix = PrefixCache.build(model, sp, prefix_ids)
            assert prefix.length == len(prefix_ids) + (4 if with_soft else 0)
            got, got_logp = greedy_generate(model, prefix, torch.tensor([body_ids]), 8, [], screen=screen)
        elif with_soft:  # no cache: the soft prompt goes in as input embeddings
            embeds = sp(model.get_input_embeddings()(torch.tensor([ids])))
            got, got_logp = greedy_generate(model, None, embeds, 8, [], screen=screen)
        else:
            got, got_logp = greedy_generate(model, None, torch.tensor([ids]), 8, [], screen=screen)
        assert len(want) == 8 and len(set(want)) > 2  # a run that changes token, not one token repeated
        assert got == want
        # the screened head's normaliser is exact for its 16 candidates and int8 elsewhere (this random
        # model's flat distributions put more of its mass elsewhere than a trained LM's do)
        assert got_logp == pytest.approx(want_logp, abs=5e-3 if screen else 1e-4)


@pytest.mark.parametrize("with_soft", [False, True])
def test_stops_where_generate_stops(backbone, model, soft, with_soft):
    sp = soft if with_soft else None
    prefix_ids, body_ids = _parts(backbone, "qa-completion")
    free, _ = reference(model, prefix_ids + body_ids, sp, 8, [])
    # a token the free run first emits at step 3 or later: both paths must stop there, and return it
    stop = next(t for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    want, want_logp = reference(model, prefix_ids + body_ids, sp, 8, [stop, backbone.tokenizer.eos_token_id])
    got, got_logp = greedy_generate(model, PrefixCache.build(model, sp, prefix_ids), torch.tensor([body_ids]), 8,
                                    [stop, backbone.tokenizer.eos_token_id])
    assert got == want == free[: free.index(stop) + 1]
    assert 2 < len(got) < 8
    assert got_logp == pytest.approx(want_logp, abs=5e-3)  # the screened head, as above


def test_prefix_cache_is_not_changed_by_decoding(backbone, model, soft):
    prefix_ids, body_ids = _parts(backbone, "qa-completion")
    prefix = PrefixCache.build(model, soft, prefix_ids)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.past_key_values.layers]
    first = greedy_generate(model, prefix, torch.tensor([body_ids]), 6, [])
    other_ids = encode_parts(backbone.tokenizer, get_template("qa-completion"), "What is the capital of Australia?",
                             PASSAGES[1:])[1]
    greedy_generate(model, prefix, torch.tensor([other_ids]), 6, [])
    assert prefix.past_key_values.get_seq_length() == prefix.length == len(prefix_ids) + 4
    for (k, v), layer in zip(before, prefix.past_key_values.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
    assert greedy_generate(model, prefix, torch.tensor([body_ids]), 6, []) == first  # same question, same answer


def test_building_a_prefix_never_runs_the_output_head(backbone, model, soft, monkeypatch):
    """A prefix needs keys and values only: a head over the whole vocabulary would read (and, for a
    memory-mapped model, make resident) the whole output table for nothing."""
    prefix_ids, _ = _parts(backbone, "qa-completion")
    want = PrefixCache.build(model, soft, prefix_ids)

    def no_head(*args, **kwargs):
        raise AssertionError("the output head ran")

    monkeypatch.setattr(model.lm_head, "forward", no_head)
    got = PrefixCache.build(model, soft, prefix_ids)
    assert got.length == want.length
    for mine, theirs in zip(got.past_key_values.layers, want.past_key_values.layers):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


def test_the_prefix_matters(backbone, model):
    """Control: decoding the body without its prefix gives other log-probs, so the tests above can see a lost prefix."""
    prefix_ids, body_ids = _parts(backbone, "qa-completion")
    _, with_prefix = greedy_generate(model, PrefixCache.build(model, None, prefix_ids), torch.tensor([body_ids]), 4, [])
    _, without = greedy_generate(model, None, torch.tensor([body_ids]), 4, [])
    assert max(abs(a - b) for a, b in zip(with_prefix, without)) > 1e-3


def test_cached_prefix_builds_once_per_key(backbone, model, soft):
    prefix_ids, _ = _parts(backbone, "qa-completion")
    key = ("test_cached_prefix_builds_once_per_key", "float32")
    builds = PrefixCache.builds
    first = cached_prefix(key, model, soft, prefix_ids)
    assert cached_prefix(key, model, soft, prefix_ids) is first
    assert PrefixCache.builds == builds + 1
    assert cached_prefix(key, model, soft, prefix_ids[:-1]) is not first  # other prefix ids: another entry
    assert PrefixCache.builds == builds + 2
    assert cached_prefix(key, model, None, []) is None  # nothing to cache


def test_bad_inputs(model):
    with pytest.raises(PipelineConfigError, match="shape"):
        greedy_generate(model, None, torch.zeros(1, 0, dtype=torch.long), 4, [])
    with pytest.raises(PipelineConfigError, match="shape"):
        greedy_generate(model, None, torch.zeros(2, 3, dtype=torch.long), 4, [])
    with pytest.raises(PipelineConfigError, match="empty"):
        PrefixCache.build(model, None, [])
    assert greedy_generate(model, None, torch.tensor([[5, 6]]), 0, []) == ([], [])


# --- batched greedy decoding ---------------------------------------------------------------------
BATCH_QUESTIONS = [QUESTION, "What is the capital of Australia?", "Which planet is red?",
                   "Who painted the ceiling of the Sistine Chapel in Rome, and in which years?"]


@pytest.mark.parametrize("with_soft", [False, True])
def test_batched_answers_are_the_single_answers(backbone, model, soft, with_soft):
    """Bodies of four lengths in one batch: each row's tokens and log-probs are what it gets alone."""
    sp = soft if with_soft else None
    template = get_template("qa-completion")
    parts = [encode_parts(backbone.tokenizer, template, q, PASSAGES[i % 2:]) for i, q in enumerate(BATCH_QUESTIONS)]
    prefix = PrefixCache.build(model, sp, parts[0][0])
    bodies = [body for _, body in parts]
    assert len({len(b) for b in bodies}) == len(bodies)  # every row padded differently
    alone = [greedy_generate(model, prefix, torch.tensor([body]), 8, []) for body in bodies]
    together = greedy_generate_batch(model, prefix, bodies, 8, [])
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert len({tuple(t) for t, _ in alone}) == len(alone)  # the rows really differ
    for (_, got), (_, want) in zip(together, alone):
        assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("with_soft", [False, True])
def test_an_int8_batch_gives_each_row_its_logits_alone_bit_for_bit(backbone, model, soft, with_soft):
    """Int8 products are exact integers, the float layers run per sequence, attention per row: each
    row's tokens and log-probs equal its own alone exactly, not within a tolerance."""
    from odqa.lm.backbone import shared_copy
    from odqa.lm.quantization import quantize_int8

    int8 = shared_copy(model)
    quantize_int8(int8)
    sp = soft if with_soft else None
    template = get_template("qa-completion")
    parts = [encode_parts(backbone.tokenizer, template, q, PASSAGES[i % 2:]) for i, q in enumerate(BATCH_QUESTIONS)]
    prefix = PrefixCache.build(int8, sp, parts[0][0])
    bodies = [body for _, body in parts]
    alone = [greedy_generate(int8, prefix, torch.tensor([body]), 8, []) for body in bodies]
    assert greedy_generate_batch(int8, prefix, bodies, 8, []) == alone
    assert greedy_generate_batch(int8, prefix, bodies[::-1], 8, []) == alone[::-1]  # whatever shares the batch
    assert len({tuple(t) for t, _ in alone}) == len(alone)


def test_the_padded_prefill_gives_the_same_answers(backbone, model, soft, monkeypatch):
    """The GPU's prefill (one padded batch) leaves the layout the CPU's (each body alone) leaves:
    the same mask and positions, the same first logits, the same answers."""
    from odqa.lm import generation

    template = get_template("qa-completion")
    parts = [encode_parts(backbone.tokenizer, template, q, PASSAGES[i % 2:]) for i, q in enumerate(BATCH_QUESTIONS)]
    prefix = PrefixCache.build(model, soft, parts[0][0])
    bodies = [body for _, body in parts]
    with torch.inference_mode():
        alone = generation._prefill_alone(model, None, prefix, bodies)
        padded = generation._prefill_padded(model, None, prefix, bodies, pad_id=0)
    assert torch.equal(alone[2], padded[2]) and torch.equal(alone[3], padded[3])
    assert torch.allclose(alone[1], padded[1], atol=1e-4)
    for got, want in zip(alone[0].layers, padded[0].layers):  # the pads differ (zeros / masked pads' keys)
        keep = alone[2].bool()[:, None, :, None].expand_as(want.keys)
        assert torch.allclose(got.keys[keep], want.keys[keep], atol=1e-4)
    want = greedy_generate_batch(model, prefix, bodies, 8, [])
    monkeypatch.setattr(generation, "_prefill_alone", lambda m, h, p, b: generation._prefill_padded(m, h, p, b, 0))
    assert [t for t, _ in greedy_generate_batch(model, prefix, bodies, 8, [])] == [t for t, _ in want]


def test_side_by_side_refuses_a_cache_cut_by_its_window(backbone, model, soft):
    from odqa.lm import generation

    template = get_template("qa-completion")
    prefix_ids, body = encode_parts(backbone.tokenizer, template, QUESTION, PASSAGES)
    prefix = PrefixCache.build(model, soft, prefix_ids)
    with torch.inference_mode():
        caches = [generation._step(model, None, input_ids=torch.tensor([body]), past_key_values=prefix.fresh(),
                                   attention_mask=torch.ones(1, prefix.length + len(body), dtype=torch.long),
                                   position_ids=torch.arange(prefix.length, prefix.length + len(body))[None])[0]
                  for _ in range(2)]
    with pytest.raises(PipelineConfigError, match="holds .* positions, not the .* of its row"):
        generation._side_by_side(caches, prefix.length, [len(body), len(body) + 1])


def test_batched_rows_stop_at_their_own_stop_token(backbone, model, soft):
    template = get_template("qa-completion")
    parts = [encode_parts(backbone.tokenizer, template, q, PASSAGES) for q in BATCH_QUESTIONS[:3]]
    prefix = PrefixCache.build(model, soft, parts[0][0])
    bodies = [body for _, body in parts]
    free = [greedy_generate(model, prefix, torch.tensor([b]), 8, [])[0] for b in bodies]
    # a token row 0 first emits at step 3 or later; the others stop there too if they emit it, or run on
    stop = next(t for i, t in enumerate(free[0]) if i >= 2 and t not in free[0][:i])
    together = greedy_generate_batch(model, prefix, bodies, 8, [stop])
    for (got, _), row in zip(together, free):
        want = row[: row.index(stop) + 1] if stop in row else row
        assert got == want
    assert 2 < len(together[0][0]) < 8 and any(len(got) != len(together[0][0]) for got, _ in together)


def test_a_finished_row_leaves_the_batch(backbone, model, soft, monkeypatch):
    """Rows that hit their stop token are not decoded further: later steps run on the rest only."""
    template = get_template("qa-completion")
    parts = [encode_parts(backbone.tokenizer, template, q, PASSAGES) for q in BATCH_QUESTIONS[:3]]
    prefix = PrefixCache.build(model, soft, parts[0][0])
    bodies = [body for _, body in parts]
    free = [greedy_generate(model, prefix, torch.tensor([b]), 8, [])[0] for b in bodies]
    stop = free[0][1]  # row 0 stops at its second token
    rows_per_step = []
    decoder = type(model.base_model)
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda self, input_ids=None, **kw: rows_per_step.append(input_ids.shape[0])
                        or forward(self, input_ids=input_ids, **kw))
    together = greedy_generate_batch(model, prefix, bodies, 8, [stop])
    assert together[0][0] == free[0][:2]
    still = [row for row in free if stop not in row[:2]]  # rows not done after step 2
    # on a CPU each body is prefilled alone, then the three rows decode together
    assert rows_per_step[:4] == [1, 1, 1, 3] and rows_per_step[4] == len(still) < 3
    for (got, _), row in zip(together, free):
        assert got == (row[: row.index(stop) + 1] if stop in row else row)


def test_batched_without_a_prefix(backbone, model):
    template = get_template("qa")
    rows = [sum(encode_parts(backbone.tokenizer, template, q, PASSAGES), []) for q in BATCH_QUESTIONS[:2]]
    alone = [greedy_generate(model, None, torch.tensor([r]), 5, [])[0] for r in rows]
    assert [t for t, _ in greedy_generate_batch(model, None, rows, 5, [])] == alone
    with pytest.raises(PipelineConfigError, match="one or more non-empty token sequences"):
        greedy_generate_batch(model, None, [rows[0], []], 5, [])


def _mixture_reference(model, prefix, bodies: list[list[int]], weights: list[float], steps: int) -> list[int]:
    """The passage ensemble by hand: every reading run in full at every step, the mixture's argmax appended to all."""
    rows = [list(b) for b in bodies]
    out = []
    for _ in range(steps):
        mixed = sum(w * torch.softmax(_next_logits(model, prefix, r), dim=-1) for w, r in zip(weights, rows))
        token = int(torch.argmax(mixed))
        out.append(token)
        rows = [r + [token] for r in rows]
    return out


def _next_logits(model, prefix, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        cache = prefix.fresh()
        n = len(ids)
        out = model(input_ids=torch.tensor([ids]), past_key_values=cache,
                    attention_mask=torch.ones(1, prefix.length + n, dtype=torch.long),
                    position_ids=torch.arange(prefix.length, prefix.length + n).unsqueeze(0))
    return out.logits[0, -1].float()


def test_an_ensemble_decodes_the_mixture_of_its_readings(backbone, model, soft):
    """REPLUG's ensemble: each step's token is the argmax of sum_d w_d p(token | question, passage d)."""
    template = get_template("qa-completion")
    parts = [encode_parts(backbone.tokenizer, template, QUESTION, [p]) for p in PASSAGES]
    prefix = PrefixCache.build(model, soft, parts[0][0])
    bodies = [body for _, body in parts]
    alone = [greedy_generate(model, prefix, torch.tensor([b]), 6, [])[0] for b in bodies]
    assert alone[0] != alone[1]  # the two readings disagree, so the mixture decides
    for weights in ([0.5, 0.5], [0.8, 0.2], [0.1, 0.9]):
        (got, logp), = greedy_generate_batch(model, prefix, bodies, 6, [], weights=[weights])
        assert got == _mixture_reference(model, prefix, bodies, weights, 6)
        assert all(x <= 0 for x in logp)
    # one reading of weight 1 is plain greedy decoding
    (got, logp), = greedy_generate_batch(model, prefix, bodies[:1], 6, [], weights=[[1.0]])
    assert got == alone[0]


def test_ensemble_answers_do_not_depend_on_their_batch(backbone, model, soft):
    """Three questions, read with 2, 1 and 3 passages, in one batch: each answer is its ensemble's alone."""
    template = get_template("qa-completion")
    passages = PASSAGES + [("Hamlet", "Hamlet is a tragedy by William Shakespeare, set in Denmark.")]
    groups = [passages[:2], passages[1:2], passages]
    weights = [[0.6, 0.4], [1.0], [0.2, 0.3, 0.5]]
    bodies = [[encode_parts(backbone.tokenizer, template, q, [p])[1] for p in g]
              for q, g in zip(BATCH_QUESTIONS, groups)]
    prefix = PrefixCache.build(model, soft, encode_parts(backbone.tokenizer, template, QUESTION, [])[0])
    alone = [greedy_generate_batch(model, prefix, b, 8, [], weights=[w])[0] for b, w in zip(bodies, weights)]
    free = [t for t, _ in alone]
    # a token the second answer first emits at step 3 or later: it stops there; the others stop or run on
    stop = next(t for i, t in enumerate(free[1]) if i >= 2 and t not in free[1][:i])
    together = greedy_generate_batch(model, prefix, [x for b in bodies for x in b], 8, [stop], weights=weights)
    for (got, logp), want, (_, want_logp) in zip(together, free, alone):
        cut = want[: want.index(stop) + 1] if stop in want else want
        assert got == cut
        assert logp == pytest.approx(want_logp[: len(cut)], abs=1e-4)
    assert 2 < len(together[1][0]) < 8


def test_ensemble_weights_must_match_the_rows(backbone, model):
    rows = [sum(encode_parts(backbone.tokenizer, get_template("qa"), q, PASSAGES), []) for q in BATCH_QUESTIONS[:3]]
    with pytest.raises(PipelineConfigError, match="the weights cover 2 rows in 1 answers .* but there are 3 bodies"):
        greedy_generate_batch(model, None, rows, 2, [], weights=[[0.5, 0.5]])
    with pytest.raises(PipelineConfigError, match="each needs one or more"):
        greedy_generate_batch(model, None, rows, 2, [], weights=[[0.5, 0.5], [], [1.0]])
    with pytest.raises(PipelineConfigError, match="ensemble weights must be at least 0, and one of each answer's"):
        greedy_generate_batch(model, None, rows, 2, [], weights=[[1.0, -0.5], [1.0]])
    with pytest.raises(PipelineConfigError, match="ensemble weights must be at least 0, and one of each answer's"):
        greedy_generate_batch(model, None, rows, 2, [], weights=[[0.0, 0.0], [1.0]])
    # a reading of weight 0 (a softmax that underflowed) adds nothing: the answer is the other reading's
    alone = greedy_generate_batch(model, None, rows[:1], 3, [])
    assert [t for t, _ in greedy_generate_batch(model, None, rows[:2], 3, [], weights=[[1.0, 0.0]])] == \
        [t for t, _ in alone]
