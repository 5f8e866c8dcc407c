"""Every method's command is built from its declaration (cli/methods.py).

A declared parameter is an option of the command, with the declared help, range and default;
an option the declaration does not know is refused by the parser, and a value outside the
declared range is the declaration's one-line error. Commands with options of their own (IRR's
``--sparsity``, Safe LoRA's ``--full``) keep those beside the declared ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
import typer
from helpers import assert_one_line_error, load_folder_tensors, run_cli
from tiny import save_tiny_model

from realignkit.cli import app
from realignkit.cli.methods import method_command
from realignkit.contract import Edit, Method, Param, WeightInputs
from realignkit.errors import RealignError
from realignkit.methods.registry import load_methods

# Declared methods that are another method's setting, run by that method's command.
VARIANTS = {"resta+dare": "resta"}


def click_commands(typer_app: typer.Typer) -> dict[str, Any]:
    return typer.main.get_command(typer_app).commands  # type: ignore[attr-defined]


def options_of(command: Any) -> dict[str, Any]:
    """Every spelling of every option of a click command → its click parameter."""
    return {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_every_registered_method_has_a_command_with_its_declared_parameters() -> None:
    commands = click_commands(app)
    methods = load_methods()
    assert set(VARIANTS) <= set(methods)
    for name, method in methods.items():
        command = commands[VARIANTS.get(name, name)]
        options = options_of(command)
        for param in method.params:
            if not param.cli:
                assert param.option not in options, (name, param.name)
                continue
            assert param.option in options, (name, param.option)
            option = options[param.option]
            assert param.help in option.help, (name, param.option)
            if param.type is bool:
                assert f"--no-{param.option.removeprefix('--')}" in options, (name, param.option)
            if param.choices:
                assert param.range_text() in option.help, (name, param.option)
            if param.default is not None and param.default != () and param.type is not bool:
                assert f"Default: {param.default}." in option.help, (name, param.option)
            # not given is None: Method.resolve fills in the declared (or a preset's) default
            assert option.default is None, (name, param.option)


def test_irr_and_safelora_keep_their_own_options() -> None:
    commands = click_commands(app)
    irr, safelora = options_of(commands["irr"]), options_of(commands["safelora"])
    for flag in ("--sparsity", "--true-sequential", "--official", "--fisher", "--calibration"):
        assert flag in irr
    assert "--fisher-mode" not in irr  # a recipe setting: the command is given --fisher
    assert "--full" in safelora and "--adapter" in safelora and "--finetuned" in safelora
    assert "--base" not in safelora  # an adapter is trained on --aligned


def _scale(given: WeightInputs, params: Mapping[str, Any]) -> Edit:
    return Edit(given.finetuned * params["factor"])


def _toy_app(*params: Param) -> typer.Typer:
    toy = Method(
        name="toy-scale",
        version=1,
        summary="Every block weight times a factor.",
        kind="weight",
        params=params,
        needs=frozenset({"finetuned"}),
        edit_weight=_scale,
    )
    toy_app = typer.Typer()
    toy_app.callback()(lambda: None)  # a group: commands are called by name
    method_command(toy, on=toy_app)
    return toy_app


FACTOR = Param("factor", float, 1.0, "Scale of every block weight.", low=0.0, high=2.0)


def test_a_declared_parameter_is_an_option_and_its_range_is_checked(tmp_path) -> None:
    model = save_tiny_model("llama", tmp_path / "model", seed=1)
    toy_app = _toy_app(FACTOR)
    base = ["toy-scale", "--finetuned", str(model)]
    help_text = options_of(click_commands(toy_app)["toy-scale"])["--factor"].help
    assert help_text == "Scale of every block weight. (in [0, 2]) Default: 1.0."

    toy_app(args=[*base, "--factor", "0.5", "-o", str(tmp_path / "half")], standalone_mode=False)
    before, after = load_folder_tensors(model), load_folder_tensors(tmp_path / "half")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(after[name], before[name] * 0.5)
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])

    with pytest.raises(RealignError, match=r"^--factor must be in \[0, 2\], got 3.0$"):
        toy_app(args=[*base, "--factor", "3", "-o", str(tmp_path / "x")], standalone_mode=False)
    with pytest.raises(Exception, match="No such option: --gamma") as refused:
        toy_app(args=[*base, "--gamma", "1", "-o", str(tmp_path / "x")], standalone_mode=False)
    assert type(refused.value).__name__ == "NoSuchOption"  # typer vendors click
    assert not (tmp_path / "x").exists()

    # one more declared parameter: one more option, nothing else to edit
    offset = Param("offset", int, 0, "Unused here.", low=0)
    added = options_of(click_commands(_toy_app(FACTOR, offset))["toy-scale"])
    assert "--offset" in added and "--factor" in added


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--rho", "0.5", "--sparsity", "0.2"], "give --rho or --sparsity, not both"),
        (["--sparsity", "1.5"], "--sparsity must be in [0, 1], got 1.5"),
        (["--true-sequential", "--modules", "q_proj"], "--true-sequential or --modules"),
        (["--budget", "blocks"], "--budget must be one of block, matrix, global"),
        (["--block-size", "0"], "--block-size must be >= 1, got 0"),
        (["--mask-selection", "adaptive", "--budget", "matrix"], "needs --budget block"),
    ],
)
def test_irr_options_are_checked_by_the_declaration(tmp_path, capsys, options, needle) -> None:
    args = ["irr", "--safety-vector", tmp_path / "sv", "-o", tmp_path / "out", *options]
    assert_one_line_error(capsys, run_cli(args), needle)
    assert not (tmp_path / "out").exists()
