"""The output head for greedy decoding: screened in int8, the argmax checked in float.

At every decoding step the frozen LM's output head multiplies the last hidden state by the
whole vocabulary: for Gemma-3-270m a 262,144 x 640 float32 table (671 MB, the embeddings
tied to it), read once per step for a handful of new tokens, so the head alone costs about as
much as the rest of the model on this machine (``bench/floor.py``). Greedy decoding needs only
the argmax and its log-probability, so :class:`ScreenedHead` computes the logits in int8 (a
quarter of the bytes, through the exact int8 kernel of :class:`~odqa.lm.quantization.Int8Weight`),
takes the ``candidates`` best, recomputes those exactly from the float table, and proves the
argmax: every other token's int8 logit plus a bound on its rounding error must stay below the
best exact logit. Where the proof fails (with 16 candidates, for 20 rows over 24 fanoutqa test
questions in batches of 8) the row recomputes exactly every token whose bound reaches the best
exact logit, which proves it.
Decoding thus reads a few rows of the float table per step, never all of it, and a memory-mapped
table's other pages stay on disk (over those 24 questions, 1,098 of its 262,144 rows were read).
The chosen token is the float head's argmax (up to float32's own summation order), and its
log-probability is normalised over logits that are exact for the candidates and within the bound
elsewhere.

The bound, per vocabulary row ``r``, by Cauchy-Schwarz: with the weight row rounded as
``w_r ~ s_r q_r`` (error ``e_r = |w_r - s_r q_r|_2``, stored) and the hidden state as ``h ~ x_s q_h``,
``|w_r . h - s_r x_s (q_r . q_h)| <= e_r |h|_2 + |s_r q_r|_2 |h - x_s q_h|_2``.

Usage:
    >>> head = screened_head(model)             # once per model; None where it does not apply
    >>> logits = head(hidden[:, -1])            # [rows, vocab], argmax exact
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import torch

from odqa.lm.quantization import Int8Weight, int8_rows, madvise, row_exact_class

logger = logging.getLogger(__name__)

CANDIDATES = 16  # logits recomputed exactly per row; where that does not prove the argmax, the row widens
_SLACK = 1e-4  # added to the bound, for float32 rounding in the int8 logits' rescaling


class ScreenedHead:
    """``hidden -> logits`` for a float ``nn.Linear`` head (optionally soft-capped), argmax-exact."""

    def __init__(self, head: torch.nn.Linear, softcap: float | None = None, candidates: int = CANDIDATES,
                 tables: dict[str, torch.Tensor] | None = None):
        """:param tables: ``weight_q``, ``scale``, ``error_l2`` and ``rounded_l2`` as :meth:`tables`
            gave them for this head before (read from a cache), so the float table is not read to
            build them."""
        weight = head.weight.detach()
        self.weight = weight  # the float table itself (shared with the model, not copied)
        self.bias = None if head.bias is None else head.bias.detach().float()
        if tables is None:
            tables = build_tables(weight)
        self.int8 = Int8Weight(tables["weight_q"])  # the kernel that multiplies it fast on this CPU
        self.scale = tables["scale"]
        self.error_l2, self.rounded_l2 = tables["error_l2"], tables["rounded_l2"]
        self.softcap = softcap
        self.candidates = min(candidates, weight.shape[0])
        self.widened = 0  # rows whose proof needed more than the candidates recomputed

    def tables(self) -> dict[str, torch.Tensor]:
        return {"weight_q": self.weight_q, "scale": self.scale, "error_l2": self.error_l2,
                "rounded_l2": self.rounded_l2}

    @property
    def weight_q(self) -> torch.Tensor:
        return self.int8.weight_q

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def screen(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(int8 logits, bound)``, each ``[rows, vocab]``: the float head's logits lie within
        ``bound`` of the int8 ones (before any soft cap)."""
        h = hidden.float()
        h_q, x_scale = int8_rows(h)
        approx = self.int8(h_q) * x_scale * self.scale
        if self.bias is not None:
            approx = approx + self.bias
        h_error = (h - h_q.float() * x_scale).norm(dim=1, keepdim=True)
        bound = self.error_l2 * h.norm(dim=1, keepdim=True) + self.rounded_l2 * h_error + _SLACK
        return approx, bound

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits for ``hidden`` (``[rows, dim]``): exact for each row's candidates, their argmax
        the float head's."""
        approx, bound = self.screen(hidden)
        top = approx.topk(self.candidates, dim=1).indices  # [rows, k]
        exact = self._exact(hidden, top)
        others = (approx + bound).scatter(1, top, float("-inf"))  # the best each other token could be
        logits = approx.scatter(1, top, exact)
        best = exact.amax(dim=1)
        for row in (best <= others.amax(dim=1)).nonzero().flatten().tolist():
            # not proven: every token whose bound reaches the best exact logit is computed exactly too;
            # each token left out is then below the best, so the argmax is among the exact ones
            self.widened += 1
            more = (others[row] >= best[row]).nonzero().t()  # [1, m]
            logits[row, more[0]] = self._exact(hidden[row:row + 1], more)[0]
        return self._cap(logits)

    def _exact(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The float head's logits of ``tokens`` (``[rows, k]`` ids) for each row of ``hidden``."""
        exact = torch.einsum("rd,rkd->rk", hidden.to(self.weight.dtype), self.weight[tokens]).float()
        return exact if self.bias is None else exact + self.bias[tokens]


BUILD_ROWS = 16384  # rows of the float table rounded at once (Gemma's head: 16 blocks of 42 MB)


def build_tables(weight: torch.Tensor, rows: int = BUILD_ROWS) -> dict[str, torch.Tensor]:
    """:meth:`ScreenedHead.tables` for a float head ``weight`` (``[vocab, dim]``), a block of
    ``rows`` rows at a time: each row's numbers are its own, so the blocks give the whole table's.

    Built whole, Gemma's 671 MB table took four float temporaries of its size: the first run on a
    machine (before the tables are cached) peaked at 3,337,528 KiB, against 1,614,424 KiB once they
    are (``odqa eval --pipeline pipelines/frozen_reader.yml --questions fanoutqa-wiki:test --limit 8
    --batch-size 8``, session 18). In blocks the temporaries are a block's, and each block of a
    memory-mapped table is paged out once read (``MADV_PAGEOUT``: advice only; a page still in use
    is read again when touched), so building does not make the whole table resident either."""
    vocab = weight.shape[0]
    tables = {"weight_q": torch.empty(weight.shape, dtype=torch.int8), "scale": torch.empty(vocab),
              "error_l2": torch.empty(vocab), "rounded_l2": torch.empty(vocab)}
    for start in range(0, vocab, rows):
        block = weight[start:start + rows]
        q, scale = int8_rows(block)
        rounded = q.float() * scale
        end = start + block.shape[0]
        tables["weight_q"][start:end] = q
        tables["scale"][start:end] = scale[:, 0]
        tables["error_l2"][start:end] = (block.float() - rounded).norm(dim=1)  # e_r
        tables["rounded_l2"][start:end] = rounded.norm(dim=1)  # |s_r q_r|_2
        madvise(block, "MADV_PAGEOUT")
    return tables


_HEADS: dict[int, ScreenedHead | None] = {}
_LOCK = threading.Lock()
CACHE_VERSION = 2


def screened_head(model) -> ScreenedHead | None:
    """The process-wide :class:`ScreenedHead` of a causal LM whose output head is a float
    ``nn.Linear`` on the CPU (built on first use; models sharing a head table share it), or
    ``None`` where screening does not apply (another head, a GPU: there the float head is cheap).

    For a model loaded from a local directory of safetensors files, the int8 table is cached
    under ``$ODQA_HOME/screened-heads/``: built from it, the head never reads the float table
    but for the candidates' rows, so those pages of a memory-mapped model (Gemma's 671 MB
    embeddings, tied to the head) need not become resident."""
    head = getattr(model, "lm_head", None)
    plain = type(head) is torch.nn.Linear or type(head) is row_exact_class(torch.nn.Linear)  # an int8 backbone's float head
    if not plain or head.weight.device.type != "cpu" or not head.weight.is_floating_point():
        return None
    key = head.weight.data_ptr()
    with _LOCK:
        if key not in _HEADS:
            softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
            _read_at_random(head.weight, _model_files(model))
            cache = _cache_file(model, head)
            tables = _read(cache) if cache is not None else None
            built = ScreenedHead(head, softcap, tables=tables)
            if cache is not None and tables is None:
                _write(cache, built.tables())
            _HEADS[key] = built
        return _HEADS[key]


def _read_at_random(weight: torch.Tensor, files: list[Path]) -> None:
    """Make reading a few rows of a memory-mapped table cost a few pages of memory (Linux; elsewhere
    nothing). ``madvise(MADV_RANDOM)`` on ``weight``'s memory: a page fault brings in that page alone,
    without read-ahead. And ``posix_fadvise(DONTNEED)`` on the model's ``files``: their cached pages
    that no process maps are dropped (pages the model's writing or loading brought in come in large
    folios, each mapped whole by the fault of one row); read again one at a time, the rows the
    prompts and candidates touch cost a page each. Without the second, the default pipeline over the
    144 fanoutqa test questions in batches of 8 peaked 298 MiB higher (eval/RESULTS.md, session 12)."""
    madvise(weight, "MADV_RANDOM")
    for path in files if hasattr(os, "posix_fadvise") else ():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages only; mapped ones stay
        finally:
            os.close(fd)


def _model_files(model) -> list[Path]:
    """The safetensors files of a model loaded from a local directory (else none)."""
    source = Path(str(getattr(model, "name_or_path", "") or ""))
    return sorted(source.glob("*.safetensors")) if source.is_dir() else []


def _cache_file(model, head: torch.nn.Linear) -> Path | None:
    """Where this head's int8 tables are cached: named by the model files' names, sizes and
    modification times, the head's shape and dtype, and a hash of 512 of its rows, evenly spaced;
    ``None`` for a model not loaded from a local directory of safetensors."""
    from odqa.resources import odqa_home

    files = _model_files(model)
    if not files:
        return None
    source = files[0].parent
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    # and a sample of the table itself (512 rows): a model built from that directory's config with
    # other weights, or changed after loading, names another file
    weight = head.weight.detach()
    sample = weight[:: max(1, weight.shape[0] // 512)].float().contiguous().numpy().tobytes()
    what = json.dumps([CACHE_VERSION, str(source.resolve()), stamp, list(weight.shape), str(weight.dtype),
                       hashlib.sha256(sample).hexdigest()])
    return odqa_home() / "screened-heads" / f"{hashlib.sha256(what.encode()).hexdigest()[:32]}.safetensors"


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path)) if path.exists() else None
    except (OSError, SafetensorError):  # unreadable or cut short: build it again
        return None


def _write(path: Path, tables: dict[str, torch.Tensor]) -> None:
    """Cache the tables (atomically); a cache that cannot be written is skipped, not an error."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tables.items()}, str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        logger.warning("could not cache the screened output head at %s (%s); it is built anew each run", path, e)
