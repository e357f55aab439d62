"""odqa.configs: each trainer setting declared once, with its help text; flags made from it."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from odqa.configs import (LOOP_SETTINGS, IDPTTrainConfig, ReaderTrainConfig, RecursiveTrainConfig,
                          RerankerTrainConfig)

CONFIGS = [ReaderTrainConfig, RerankerTrainConfig, RecursiveTrainConfig, IDPTTrainConfig]


def _parser(cls) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    cls.add_flags(p)
    return p


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_setting_has_its_help_and_its_flag(cls):
    p = _parser(cls)
    flags = {a.dest: a for a in p._actions}
    for f in fields(cls):
        assert f.metadata["help"], f"{cls.__name__}.{f.name} has no help text"
        assert f.name in flags and flags[f.name].help.startswith(f.metadata["help"])
    loop = next(g for g in p._action_groups if g.title == "training loop")
    assert {a.dest for a in loop._group_actions} == {f.name for f in fields(cls) if f.name in LOOP_SETTINGS}


@pytest.mark.parametrize("cls", CONFIGS)
def test_no_flags_give_the_defaults_and_quick_is_one_method(cls):
    config = cls.from_args(_parser(cls).parse_args([]))
    assert config == cls()
    quick = config.quick()
    assert {k: getattr(quick, k) for k in cls.QUICK} == cls.QUICK and quick != config


def test_flags_are_parsed_into_the_config():
    args = _parser(RecursiveTrainConfig).parse_args(["--max-steps", "5", "--no-pretrain", "--top-p", "0.5"])
    config = RecursiveTrainConfig.from_args(args)
    assert (config.max_steps, config.pretrain, config.top_p) == (5, False, 0.5)
    config = RerankerTrainConfig.from_args(_parser(RerankerTrainConfig).parse_args(
        ["--lora-r", "4", "--lora-targets", "query", "value"]))
    assert (config.lora_r, config.lora_alpha, config.lora_targets) == (4, 8, ["query", "value"])  # alpha: 2 x r


def test_choices_come_from_the_field():
    with pytest.raises(SystemExit):
        _parser(IDPTTrainConfig).parse_args(["--mode", "nope"])
