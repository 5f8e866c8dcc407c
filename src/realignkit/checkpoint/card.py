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


# The metadata file every output carries (it is also the writer's overwrite mark).
META_FILE = "realignkit.json"
META_FORMAT = "realignkit-output"
META_SCHEMA = 1


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def write_documents(
    writer: Any,
    *,
    method: str,
    version: int,
    summary: str,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Mapping[str, str]],
    totals: Mapping[str, Any],
    edited: int,
    copied: int,
    weights: Mapping[str, Any],
    title: str | None = None,
    body: str = "",
    card_settings: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    tags: tuple[str, ...] = (),
    library_name: str = "transformers",
) -> dict[str, Any]:
    """One model card and one ``realignkit.json`` into ``writer``'s folder, the same shape for
    every output (re-aligned models, adapters, safety vectors, Fisher scores): the method and
    its version, the realignkit version, every parameter, every input with its fingerprint
    (``inputs``: role → {"path", "fingerprint"}), totals, and per-weight statistics. The card's
    settings table shows the parameters and totals, then ``card_settings``."""
    settings = {k: _plain(v) for k, v in parameters.items()}
    settings.update(totals)
    settings.update(card_settings or {})
    first = next(iter(inputs.values()), {}).get("path")
    writer.write_card(
        model_card(
            method=title or method,
            summary=summary,
            inputs={role: value["path"] for role, value in inputs.items()},
            params=settings,
            body=body,
            base_model=base_model or first,
            tags=tags,
            library_name=library_name,
        )
    )
    meta = {
        "format": META_FORMAT,
        "schema": META_SCHEMA,
        "method": method,
        "method_version": version,
        "realignkit_version": __version__,
        "parameters": {k: _plain(v) for k, v in parameters.items()},
        "inputs": dict(inputs),
        "summary": {k: _plain(v) for k, v in totals.items()},
        "edited": edited,
        "copied": copied,
        "weights": dict(weights),
    }
    writer.write_json(META_FILE, meta)
    return meta


def described(paths: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Inputs by role, each with its path and fingerprint (for :func:`write_documents`); a name
    that is no local path (a hub id) has none."""
    from pathlib import Path

    from realignkit.checkpoint.fingerprint import fingerprint

    return {
        role: {"path": str(p), "fingerprint": fingerprint(p) if Path(p).exists() else None}
        for role, p in paths.items()
    }
