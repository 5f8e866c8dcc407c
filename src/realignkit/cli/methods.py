"""`realignkit <method>` for every declared method, built from its declaration.

The options of a command are the inputs the method declares (the fine-tuned model as
``--finetuned`` or ``--base``/``--adapter``, ``--safety-vector``, ``--aligned``...), then its
parameters (name, type, default and help from :class:`~realignkit.methods.base.Param`), then
the executor's options. A new method module gets its command without an edit here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from realignkit.cli.app import app
from realignkit.cli.options import (
    Adapter,
    AllowPickle,
    Device,
    Finetuned,
    Out,
    Overwrite,
    SafetyVectorDir,
    ShardSize,
    Workers,
)
from realignkit.methods.base import Method, Param

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
}
SOURCE_NAMES = {name for options in INPUT_OPTIONS.values() for name, _, _ in options}


def param_option(param: Param) -> tuple[Any, Any]:
    """The annotation and default of one declared parameter as a typer option."""
    kind: Any = param.type
    decls = [param.option]
    if param.type is bool:
        decls = [f"{param.option}/--no-{param.option.removeprefix('--')}"]
    if param.multiple:
        kind = list[param.type] | None  # type: ignore[name-defined]
        default = None
    elif param.optional or param.default is None:
        kind = kind | None
        default = param.default
    else:
        default = param.default
    text = param.help
    if param.low is not None or param.high is not None or param.choices:
        text += f" ({param.range_text()})"
    return Annotated[kind, typer.Option(*decls, help=text)], default


def _signature(method: Method) -> list[inspect.Parameter]:
    needs = set(method.needs) | {"finetuned"}
    params: list[inspect.Parameter] = [inspect.Parameter("out", KW, annotation=Out)]
    for need in INPUT_OPTIONS:
        if need not in needs:
            continue
        for name, annotation, required in INPUT_OPTIONS[need]:
            default = inspect.Parameter.empty if required else None
            params.append(inspect.Parameter(name, KW, annotation=annotation, default=default))
    for param in method.params:
        annotation, default = param_option(param)
        params.append(inspect.Parameter(param.name, KW, annotation=annotation, default=default))
    params += [
        inspect.Parameter("overwrite", KW, annotation=Overwrite, default=False),
        inspect.Parameter("allow_pickle", KW, annotation=AllowPickle, default=False),
        inspect.Parameter("max_shard_size", KW, annotation=ShardSize, default="1GB"),
    ]
    if method.kind == "weight":
        params.append(inspect.Parameter("workers", KW, annotation=Workers, default=2))
    else:
        params.append(inspect.Parameter("device", KW, annotation=Device, default=None))
    return params


def method_command(method: Method) -> None:
    """Register ``realignkit <method.name>`` on the app."""
    signature = _signature(method)

    def command(**options: Any) -> None:
        from realignkit.execute import Sources, execute

        sources = Sources(
            **{k: options.pop(k) for k in list(options) if k in SOURCE_NAMES},
            allow_pickle=options.pop("allow_pickle"),
        )
        values = {}
        for param in method.params:
            value = options.pop(param.name)
            values[param.name] = (value or ()) if param.multiple else value
        run = {"workers": options.pop("workers")} if "workers" in options else {}
        if "device" in options:
            run["device"] = options.pop("device")
        output = execute(
            method,
            sources,
            options.pop("out"),
            values,
            overwrite=options.pop("overwrite"),
            max_shard_size=options.pop("max_shard_size"),
            **run,
        )
        typer.echo(
            f"re-aligned model written to {output.path} "
            f"({len(output.edited)} tensors edited, {len(output.copied)} copied)"
        )

    command.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in signature}
    command.__name__ = f"{method.name.replace('+', '_')}_cmd"
    app.command(method.name, help=method.help or method.summary)(command)


def register_all() -> None:
    from realignkit.methods.registry import load_methods

    for method in load_methods().values():
        if method.cli:
            method_command(method)
