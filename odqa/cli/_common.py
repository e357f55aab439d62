"""What the command families share: where the repository and its default pipeline are, argument types."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_PIPELINE = REPO / "pipelines" / "frozen_reader.yml"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text!r}")
    return value


def add_engine_options(parser: argparse.ArgumentParser, actors_flag: str, actors_help: str,
                       gpus_flag: str | None = None) -> None:
    """``--engine local|ray`` and the Ray options (:mod:`odqa.ray_engine`) of a command."""
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process (default); ray: a Ray actor pool (needs the 'ray' extra)")
    parser.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                        help="with --engine ray: 'auto' or HOST:PORT of a running Ray cluster "
                             "(default: start a local runtime, stopped at the end)")
    parser.add_argument(actors_flag, dest="num_actors", type=positive_int, default=None, metavar="N",
                        help=f"with --engine ray: {actors_help} (default: one per CPU of the cluster)")
    if gpus_flag:
        parser.add_argument(gpus_flag, dest="gpus_per_actor", type=non_negative_float, default=0.0, metavar="G",
                            help="with --engine ray: GPUs each actor holds, e.g. 1 or 0.5 (default 0: CPU)")
    parser.set_defaults(engine_flags=(actors_flag, gpus_flag))


def engine_from_args(args):
    """The :class:`odqa.ray_engine.RayEngine` the options ask for, or ``None`` for ``--engine local``."""
    from odqa.errors import OdqaError

    actors_flag, gpus_flag = args.engine_flags
    gpus = getattr(args, "gpus_per_actor", 0.0)
    if args.engine == "local":
        given = [flag for flag, value in (("--address", args.address), (actors_flag, args.num_actors),
                                          (gpus_flag, gpus or None)) if value is not None]
        if given:
            raise OdqaError(f"{given[0]} applies to --engine ray only; add --engine ray, or drop {given[0]}")
        return None
    from odqa.ray_engine import RayEngine

    return RayEngine(address=args.address, actors=args.num_actors, gpus_per_actor=gpus)
