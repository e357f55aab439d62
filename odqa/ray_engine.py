"""Ray as odqa's engine beyond one process: a pool of actors over Ray Data blocks.

An index build hands its embedding chunks to a pool of encoder actors (each loads the encoder
once) and an evaluation hands its questions to a pool of actors that each hold the pipeline;
either way the driver gets the results back and writes them through the one writer the
single-process path uses (``odqa.index``'s chunk files, ``odqa.eval.harness``'s predictions),
so a killed Ray job resumes from what was written and gives the same files as a local run.

    with RayEngine(actors=2) as engine:       # a local runtime, or RayEngine(address="auto")
        for row in engine.map(Worker, (args,), rows, batch_size=1, ordered=True):
            ...

``address`` (``auto`` or ``HOST:PORT``) connects to a running cluster (``ray start --head``);
without it a local runtime starts, bound to 127.0.0.1, without dashboard or usage reports,
and is shut down at the end. Every node must have odqa installed and see the same paths
(corpus, models, pipeline files) as the driver. Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

from odqa.errors import OdqaError, first_line

INSTALL = "pip install -c constraints.txt -e '.[ray]'"
ADDRESS_FORMS = "'auto' (the cluster `ray start` made on this machine) or HOST:PORT (the head node's GCS address)"
_ADDRESS = re.compile(r"^(auto|[A-Za-z0-9_.-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5})$")
BLOCK_CHUNKS = 16  # work items per Ray Data block at most: blocks of a few MB, as Ray Data likes them

# A local runtime: loopback only (Ray otherwise binds every interface), no dashboard, and token
# authentication on with a token of this process's own (none written to ~/.ray). Ray reads these
# at import, so they apply when odqa imports Ray first in a process (as the CLI does); a process
# that imported Ray before gets Ray's own defaults. Usage reports stay off with a cluster too.
_LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


def check_address(address: str | None) -> str | None:
    """``address`` if it is one of :data:`ADDRESS_FORMS` (or ``None``), else an error naming it."""
    if address is not None and not _ADDRESS.match(address):
        raise OdqaError(f"--address '{address}' is not a Ray cluster address; pass {ADDRESS_FORMS}, or drop "
                        "--address to start a local runtime")
    return address


def import_ray(local: bool = True):
    """The ``ray`` module, or an error saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local and "ray" not in sys.modules:
        for key, value in _LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        import ray
        import ray.data  # noqa: F401 - part of the extra: a missing pyarrow/pandas shows here
    except ImportError as e:
        raise OdqaError(f"--engine ray needs Ray, which is not installed ({e}); install odqa's 'ray' extra: "
                        f"{INSTALL}, or use --engine local") from None
    return ray


@dataclass
class RayEngine:
    """Runs work on a Ray cluster's actor pool: a local runtime, or the cluster at ``address``.

    :param address: ``auto`` or ``HOST:PORT`` of a running cluster; ``None`` starts a local runtime.
    :param actors: How many actors (encoders, pipelines) to run; ``None``: one per CPU of the
        cluster, or one per ``gpus_per_actor`` GPUs.
    :param gpus_per_actor: GPUs each actor reserves (fractions share a GPU); the work then runs on CUDA.
    :param num_cpus: CPUs a local runtime may use (``None``: the machine's); ignored with ``address``.
    :param temp_dir: Where a local runtime keeps its sockets and logs (``None``: Ray's ``/tmp/ray``).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None
    temp_dir: str | None = None
    _started: bool = field(default=False, init=False, repr=False)
    _depth: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        check_address(self.address)
        if self.actors is not None and (not isinstance(self.actors, int) or self.actors < 1):
            raise OdqaError(f"the number of Ray actors (--num-encoders, --num-actors) must be at least 1, got "
                            f"{self.actors}; pass 1 or more, or leave it out for one per CPU")
        if not isinstance(self.gpus_per_actor, (int, float)) or not self.gpus_per_actor >= 0:
            raise OdqaError(f"--gpus-per-encoder must be 0 or more, got {self.gpus_per_actor}; pass e.g. 1 "
                            "(a GPU each) or 0.5 (two actors per GPU)")

    @property
    def device(self) -> str:
        """Where an actor's model runs: on its GPUs when it has some."""
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    # --- the runtime: started or joined on entry, left on exit ----------------------------------
    def __enter__(self) -> "RayEngine":
        if self._depth == 0:
            self._connect()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._started:
            import ray

            ray.shutdown()  # a local runtime stops; a cluster's runtime only loses this driver
            self._started = False

    def _connect(self) -> None:
        if "ray" in sys.modules and getattr(sys.modules["ray"], "is_initialized", lambda: False)():
            self._check_resources(sys.modules["ray"])  # a runtime this process already runs (a caller's, a test's)
            return
        import logging

        if self.address is None:
            ray = import_ray(local=True)
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, _temp_dir=self.temp_dir,
                     _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.ERROR)
        else:
            # probed first: Ray would retry an address nobody answers for many minutes
            try:
                if self.address != "auto":
                    _probe(self.address)  # before importing Ray
                ray = import_ray(local=False)
                if self.address == "auto":  # the cluster `ray start` recorded here (ConnectionError if none)
                    _probe(ray._private.services.canonicalize_bootstrap_address_or_die("auto"))
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
            except (OSError, RuntimeError, ValueError) as e:  # ConnectionError, TimeoutError: OSErrors
                raise OdqaError(f"--address {self.address}: no Ray cluster answers there ({first_line(e)}); start "
                                "one with `ray start --head`, pass its address, or drop --address to start a "
                                "local runtime") from None
        self._started = True
        try:
            self._check_resources(ray)
        except OdqaError:
            ray.shutdown()
            self._started = False
            raise

    def _check_resources(self, ray) -> None:
        """Fix the pool size and refuse one the cluster cannot place (Ray would wait for it forever)."""
        total = ray.cluster_resources()
        cpus, gpus = int(total.get("CPU", 0)), float(total.get("GPU", 0))
        where = "the local Ray runtime" if self.address is None else f"the Ray cluster at {self.address}"
        if self.gpus_per_actor > 0:
            if gpus < self.gpus_per_actor:
                raise OdqaError(f"--gpus-per-encoder {self.gpus_per_actor:g}: {where} has {gpus:g} GPUs; drop "
                                "--gpus-per-encoder to encode on CPUs, or connect to a cluster with GPUs (--address)")
            fit = int(gpus // self.gpus_per_actor)
        else:
            fit = cpus
        most = max(1, min(fit, cpus))  # each actor also takes one CPU
        if self.actors is None:
            self.actors = most
        if self.actors > min(fit, cpus):
            need = "one CPU" + (f" and {self.gpus_per_actor:g} GPUs" if self.gpus_per_actor else "")
            raise OdqaError(f"{self.actors} Ray actors ({need} each) do not fit {where} ({cpus} CPUs, {gpus:g} "
                            f"GPUs); pass --num-encoders/--num-actors {most} or fewer, or connect to a bigger "
                            "cluster with --address")

    # --- the work -------------------------------------------------------------------------------
    def map(self, worker: type, worker_args: tuple, rows: list[dict[str, Any]], batch_size: int = 1,
            ordered: bool = False) -> Iterator[dict[str, Any]]:
        """Run ``worker(*worker_args)(batch)`` on the actor pool over ``rows`` and yield its output rows.

        :param worker: A class whose instances (one per actor, made once) map a batch, a dict of
            column arrays, to a dict of output columns.
        :param batch_size: Rows per call.
        :param ordered: Yield the output in input order (otherwise as it comes).
        """
        if not rows:
            return
        with self:
            import logging

            ray = import_ray(local=self.address is None)
            from ray import data

            ctx = data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the caller shows one bar for the whole job
            ctx.print_on_execution_start = False
            ctx.execution_options.preserve_order = ordered
            for handler in logging.getLogger("ray.data").handlers:  # its log file in the session dir keeps all
                if isinstance(handler, logging.StreamHandler):
                    handler.setLevel(logging.CRITICAL + 1)  # the terminal shows odqa's bar and one-line errors
            actors = min(self.actors, len(rows))
            blocks = min(len(rows), max(4 * actors, math.ceil(len(rows) / BLOCK_CHUNKS)))
            with warnings.catch_warnings():
                # max_restarts=0: a lost actor fails the job, and a rerun resumes from what was written (Ray's
                # restarts would re-send constructor arguments it may have lost, and say so on the terminal).
                # Ray 2.60 warns that such extra actor arguments go in 2.64; the pin is 2.60.
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                ds = data.from_items(rows, override_num_blocks=blocks).map_batches(
                    worker, fn_constructor_args=worker_args, batch_size=batch_size, batch_format="numpy",
                    compute=data.ActorPoolStrategy(size=actors), num_cpus=1,
                    num_gpus=self.gpus_per_actor or None, max_restarts=0)
            try:
                yield from ds.iter_rows()
            except (ray.exceptions.RayError, data.exceptions.SystemException) as e:
                raise _cause(e) from e


def _probe(address: str, timeout: float = 5.0) -> None:
    """Raise ``OSError`` unless something accepts a connection at ``HOST:PORT``, the cluster's GCS."""
    import socket

    host, _, port = address.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): (.+)$", re.M)


def _cause(e: BaseException) -> Exception:
    """The error an actor raised, as the one-line odqa error it was, or an odqa error naming it.

    Ray hands the driver the actor's traceback as text (the exception object stays on the actor),
    so the error is read from its last line."""
    import odqa.errors

    texts, todo, seen = [], [e], set()
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        texts.append(str(x))
        texts.append(str(getattr(x, "error_msg", "")))
        todo += [getattr(x, a, None) for a in ("__cause__", "__context__", "cause")]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(texts))
    raised = [m.groups() for m in _RAISED.finditer(text) if not m.group(1).startswith("ray.")]
    ours = [(name, msg) for name, msg in raised if name.startswith("odqa.errors.")]
    if ours:
        cls = getattr(odqa.errors, ours[-1][0].rsplit(".", 1)[1], None)
        if isinstance(cls, type) and issubclass(cls, OdqaError):
            return cls(ours[-1][1])
    what = f"{raised[-1][0]}: {raised[-1][1]}" if raised else first_line(e)
    return OdqaError(f"a Ray actor failed ({what}); check that every node has odqa installed and sees the same "
                     "corpus, model and pipeline paths as this one (rerun with --debug for the traceback; Ray's "
                     "logs are in its session directory)")
