"""Model cards: every folder realignkit writes says how it was made."""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
from collections.abc import Mapping
from typing import Any

from realignkit._version import __version__


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def model_card(
    *,
    method: str,
    summary: str,
    inputs: Mapping[str, Any],
    params: Mapping[str, Any],
    body: str = "",
    base_model: str | None = None,
    tags: tuple[str, ...] = (),
    library_name: str = "transformers",
) -> str:
    """A Hugging Face model card (README.md) with YAML front matter.

    ``inputs`` names the models and files the output was made from, ``params`` every
    hyper-parameter; both become tables. ``body`` adds method-specific sections.
    ``library_name`` is ``peft`` for adapter folders.
    """
    front = ["---", f"library_name: {library_name}", "tags:", "- realignkit", f"- {method}"]
    front += [f"- {t}" for t in tags]
    if base_model:
        front.append(f"base_model: {json.dumps(str(base_model))}")
    front.append("---")
    lines = front + ["", f"# {method}: made with realignkit {__version__}", "", summary, ""]
    lines += ["## Inputs", "", "| input | value |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in inputs.items()]
    lines += ["", "## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in params.items()]
    if body:
        lines += ["", body.rstrip()]
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    lines += ["", "## Provenance", "", f"- written {when} by realignkit {__version__}"]
    lines += [f"- command: `{command}`", ""]
    return "\n".join(lines)
