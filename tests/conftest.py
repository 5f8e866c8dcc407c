"""Shared fixtures: tiny saved models and the real SmolLM2 model when its package is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores in CI: keep torch from oversubscribing them when tests run in parallel processes.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data sets beside the repository (never copied into it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a normal safetensors folder (converted once per machine)."""
    from realignkit.checkpoint.gguf import SmolLM2Unavailable, smollm2_folder

    try:
        return smollm2_folder()
    except SmolLM2Unavailable as why:
        pytest.skip(str(why))
