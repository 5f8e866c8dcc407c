"""The pins' fingerprint tolerance rejects a real change of results (see pins.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import run_cli  # noqa: E402
from pins import (  # noqa: E402
    FINGERPRINT_RTOL,
    far_from_pins,
    fingerprint,
    fingerprint_distance,
    load_fingerprints,
    one_thread,
)
from test_pinned_methods import make_world, runs  # noqa: E402


@pytest.fixture(scope="module")
def resta_outputs(tmp_path_factory) -> dict[str, Path]:
    """The pinned RESTA run on Llama, and the same with γ 1 % lower."""
    root = tmp_path_factory.mktemp("pins")
    out = root / "out"
    with one_thread():
        todo = runs(make_world(root / "world"))
        assert run_cli([*todo["llama-sv"], "-o", out / "llama-sv"]) == 0
        resta = [str(out / a[1:]) if str(a).startswith("@") else a for a in todo["llama-resta"]]
        assert run_cli([*resta, "-o", out / "pinned"]) == 0
        assert run_cli([*resta, "--gamma", "0.495", "-o", out / "gamma-0.495"]) == 0
    return {"pinned": out / "pinned", "gamma-0.495": out / "gamma-0.495"}


def test_a_one_percent_change_of_gamma_is_beyond_the_tolerance(resta_outputs):
    moved = fingerprint_distance(
        fingerprint(resta_outputs["gamma-0.495"]), fingerprint(resta_outputs["pinned"])
    )
    assert moved > 3 * FINGERPRINT_RTOL  # measured: 6e-3


def test_the_pinned_run_itself_is_within_the_tolerance_and_the_changed_one_is_not(resta_outputs):
    pinned = {"llama-resta": load_fingerprints("methods")["llama-resta"]}
    same = {"llama-resta": fingerprint(resta_outputs["pinned"])}
    changed = {"llama-resta": fingerprint(resta_outputs["gamma-0.495"])}
    assert far_from_pins(same, pinned) == {}
    assert list(far_from_pins(changed, pinned)) == ["llama-resta"]


def test_a_missing_tensor_is_infinitely_far():
    assert fingerprint_distance({"a": [1.0, 0.0, 0.0]}, {"b": [1.0, 0.0, 0.0]}) == float("inf")
