"""`realignkit <method>` for every declared method, built from its declaration.

The options of a command are the inputs the method declares (the fine-tuned model as
``--finetuned`` or ``--base``/``--adapter``, ``--safety-vector``, ``--aligned``...), then its
parameters (name, type, range and help from :class:`~realignkit.contract.Param`), then
the executor's options. A parameter's option has no default of its own: a value not given is
left to :meth:`~realignkit.contract.Method.resolve`, which fills in the declared default
(shown in the help) or a preset's (IRR's ``--official``), and which refuses an out-of-range
value in one line. A new method module gets its command without an edit here; a command with
options of its own (IRR's ``--sparsity``, Safe LoRA's ``--full``) adds them with a
:class:`Command` (see ``cli/irr.py`` and ``cli/safelora.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from realignkit.cli.app import app
from realignkit.cli.options import (
    Adapter,
    AllowPickle,
    Device,
    Dtype,
    Finetuned,
    Out,
    Overwrite,
    SafetyVectorDir,
    ShardSize,
    Workers,
)
from realignkit.contract import Method, Param

if TYPE_CHECKING:
    from realignkit.execute import Output

KW = inspect.Parameter.KEYWORD_ONLY

# input → the command's options for it: (python name, annotation, required default or None)
Base = Annotated[
    str | None,
    typer.Option(
        help="The model the fine-tune started from (needed by --adapter and some settings)."
    ),
]
INPUT_OPTIONS: dict[str, list[tuple[str, Any, bool]]] = {
    "finetuned": [
        ("finetuned", Finetuned, False),
        ("base", Base, False),
        ("adapter", Adapter, False),
    ],
    "safety_vector": [("safety_vector", SafetyVectorDir, True)],
    "aligned": [
        ("aligned", Annotated[str, typer.Option(help="The safety-aligned model θ_A.")], True)
    ],
    "pretrained": [
        (
            "pretrained",
            Annotated[str, typer.Option(help="The pre-trained model θ_A was aligned from.")],
            True,
        )
    ],
    "safety_finetune": [
        (
            "safety_finetune",
            Annotated[
                str | None,
                typer.Option(
                    "--safety-model",
                    help="The aligned model fine-tuned on a small safety set (`realignkit "
                    "finetune`).",
                ),
            ],
            False,
        ),
        (
            "safety_adapter",
            Annotated[
                str | None,
                typer.Option(help="Or that safety fine-tune as a LoRA adapter on --aligned."),
            ],
            False,
        ),
    ],
    "safety_data": [
        (
            "safety_data",
            Annotated[
                Path,
                typer.Option(help="Harmful prompts with safe responses (JSONL/JSON/CSV)."),
            ],
            True,
        )
    ],
    "fisher": [
        (
            "fisher",
            Annotated[Path | None, typer.Option(help="Folder from `realignkit fisher`.")],
            False,
        )
    ],
    "calibration": [
        (
            "calibration",
            Annotated[
                Path | None,
                typer.Option(help="Downstream-task prompts (+ responses) the model is run on."),
            ],
            False,
        )
    ],
}
SOURCE_NAMES = {name for options in INPUT_OPTIONS.values() for name, _, _ in options}


@dataclass(frozen=True)
class Command:
    """What a method's command adds to its declaration: options of its own (``extra``,
    ``inspect.Parameter`` objects), input options it leaves out (``hide``),
    ``prepare(options)``, which turns those options into parameter values and inputs (editing
    ``options``) and returns the method to run (one of the declaration's variants), and the
    line printed."""

    extra: Sequence[inspect.Parameter] = ()
    hide: frozenset[str] = frozenset()
    prepare: Callable[[dict[str, Any]], Method] | None = None
    report: Callable[[Output], str] | None = None


def _written(output: Output) -> str:
    return (
        f"re-aligned model written to {output.path} "
        f"({len(output.edited)} tensors edited, {len(output.copied)} copied)"
    )


def param_option(param: Param) -> tuple[Any, Any]:
    """The annotation of one declared parameter as a typer option, and its default: None,
    "not given" (the declared default is :meth:`Method.resolve`'s to fill in, and the help's
    to show)."""
    kind: Any = param.type
    decls = [param.option]
    if param.type is bool:
        decls = [f"{param.option}/--no-{param.option.removeprefix('--')}"]
    if param.multiple:
        kind = list[param.type]  # type: ignore[name-defined]
    text = param.help
    if param.low is not None or param.high is not None or param.choices or param.rule:
        text += f" ({param.range_text()})"
    if param.default is not None and param.default != ():
        default = param.default
        shown = ", ".join(default) if isinstance(default, tuple) else str(default)
        if param.type is bool:
            shown = param.option if default else f"--no-{param.option.removeprefix('--')}"
        text += f" Default: {shown}."
    option = typer.Option(*decls, help=text, show_default=False, rich_help_panel=param.panel)
    return Annotated[kind | None, option], None


def command_options(method: Method, command: Command | None = None) -> list[inspect.Parameter]:
    """Every option of ``realignkit <method>``, in the order of its help."""
    command = command or Command()
    needs = set(method.needs) | set(method.may_need) | {"finetuned"}
    params: list[inspect.Parameter] = [inspect.Parameter("out", KW, annotation=Out)]
    for need in INPUT_OPTIONS:
        if need not in needs:
            continue
        for name, annotation, required in INPUT_OPTIONS[need]:
            if name in command.hide:
                continue
            always = required and need in method.needs
            default = inspect.Parameter.empty if always else None
            params.append(inspect.Parameter(name, KW, annotation=annotation, default=default))
    for param in method.params:
        if param.cli:
            annotation, default = param_option(param)
            params.append(inspect.Parameter(param.name, KW, annotation=annotation, default=default))
    params += list(command.extra)
    params += [
        inspect.Parameter("overwrite", KW, annotation=Overwrite, default=False),
        inspect.Parameter("allow_pickle", KW, annotation=AllowPickle, default=False),
        inspect.Parameter("max_shard_size", KW, annotation=ShardSize, default="1GB"),
    ]
    if method.kind == "weight":
        params.append(inspect.Parameter("workers", KW, annotation=Workers, default=2))
    else:
        params.append(inspect.Parameter("device", KW, annotation=Device, default=None))
        params.append(inspect.Parameter("dtype", KW, annotation=Dtype, default=None))
    return params


def method_command(
    method: Method, command: Command | None = None, *, on: typer.Typer = app
) -> None:
    """Register ``realignkit <method.name>`` on the app (or on ``on``)."""
    command = command or Command()
    signature = command_options(method, command)

    def run(**options: Any) -> None:
        from realignkit.execute import Sources, execute
        from realignkit.modeling import parse_dtype

        chosen = command.prepare(options) if command.prepare is not None else method
        sources = Sources(
            **{k: options.pop(k) for k in list(options) if k in SOURCE_NAMES},
            allow_pickle=options.pop("allow_pickle"),
        )
        values = {}
        for param in method.params:
            value = options.pop(param.name, None)
            if value is not None:  # not given: the declared (or preset) default
                values[param.name] = value
        executor = {k: options.pop(k) for k in ("workers", "device") if k in options}
        if "dtype" in options:
            executor["dtype"] = parse_dtype(options.pop("dtype"))
        output = execute(
            chosen,
            sources,
            options.pop("out"),
            values,
            overwrite=options.pop("overwrite"),
            max_shard_size=options.pop("max_shard_size"),
            **executor,
        )
        typer.echo((command.report or _written)(output))

    run.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in signature}
    run.__name__ = f"{method.name.replace('+', '_')}_cmd"
    run.__doc__ = None
    on.command(method.name, help=method.help or method.summary)(run)


def register_all() -> None:
    from realignkit.methods.registry import load_methods

    for method in load_methods().values():
        if method.cli:
            method_command(method)
