"""Options shared by several commands, declared once so their names and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not exist).")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output folder.")]
AllowPickle = Annotated[
    bool,
    typer.Option(help="Also read pickle (.bin) checkpoints, with torch.load(weights_only=True)."),
]
ShardSize = Annotated[str, typer.Option(help="Largest output shard, e.g. 1GB or 500MB.")]
Workers = Annotated[int, typer.Option(help="Threads that read and compute ahead of the writer.")]
Device = Annotated[
    str | None, typer.Option(help="Where the model runs (cuda, cpu...); default: the accelerator.")
]
Dtype = Annotated[
    str | None, typer.Option(help="Precision of the model's forward passes (default: bf16 on GPU).")
]
Seed = Annotated[int, typer.Option(help="Seed of data subsampling and random masks.")]
SafetyVectorDir = Annotated[Path, typer.Option(help="Folder from `realignkit safety-vector`.")]
Finetuned = Annotated[str | None, typer.Option(help="The fine-tuned model (folder or hub id).")]
Adapter = Annotated[
    str | None, typer.Option(help="A PEFT LoRA adapter on --base, instead of --finetuned.")
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Split the model over devices with accelerate: auto, balanced, balanced_low_0, "
        "sequential, or a JSON map (inline or a file) of module names to a GPU index, cpu or "
        "disk. Default: the whole model on --device.",
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory per device for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB.",
    ),
]
