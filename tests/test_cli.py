"""The command line explains itself: every option has a help text with its default, every command a
description, presets are listed, `ecefl --version` answers."""
from __future__ import annotations

import argparse

import pytest

from ecefl import __version__
from ecefl.cli import build_parser, main
from ecefl.plan import PRESETS


def _walk(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + [name], sub, None
                yield from _walk(sub, path + [name])
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


def test_every_option_has_help_with_its_default_and_every_command_a_description():
    parser = build_parser()
    undocumented, commands = [], 0
    for path, sub, action in _walk(parser, ["ecefl"]):
        if action is None:
            commands += 1
            assert sub.description, f"{' '.join(path)} has no description"
            assert sub.formatter_class is argparse.ArgumentDefaultsHelpFormatter
        elif not (action.help or "").strip():
            undocumented.append(f"{' '.join(path)} {action.option_strings or action.dest}")
        if action is not None and action.dest == "preset":
            assert list(action.choices) == sorted(PRESETS)
    assert commands >= 15 and undocumented == []
    demo_help = next(s for p, s, a in _walk(parser, ["ecefl"]) if a is None and p[-1] == "demo").format_help()
    assert "(default: 40)" in demo_help and "cpu-small" in demo_help


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ecefl {__version__}"
