"""Shared fixtures: tiny saved models and the real SmolLM2 model when its package is installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run tiny models: one torch thread is as fast as two, and OpenMP threads that spin
    while another process holds the other core make small ops 20-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
