"""The pure layers say what the math refuses in the math's words; the CLI names its options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realignkit.cli import in_cli_words
from realignkit.errors import InvalidValue, RealignError
from realignkit.ops.masks import check_fraction, removal_count

OPS = Path(__file__).resolve().parent.parent / "src" / "realignkit" / "ops"


def test_a_refused_value_is_a_value_error_in_the_maths_words():
    refused = r"^the removal share rho must be in \[0, 1\], got 1.5$"
    with pytest.raises(ValueError, match=refused) as caught:
        check_fraction(1.5)
    assert isinstance(caught.value, RealignError)  # the CLI's one line, exit code 2
    assert in_cli_words(caught.value) == "--rho must be in [0, 1], got 1.5"


def test_a_choice_is_named_by_its_option_on_the_command_line():
    with pytest.raises(InvalidValue, match="unknown count rounding 'down'") as caught:
        removal_count(0.5, 10, rounding="down")
    assert in_cli_words(caught.value).startswith("unknown --count-rounding 'down'; use ")


def test_an_error_without_a_parameter_reads_the_same_everywhere():
    err = InvalidValue("Hessian must be square, got shape (2, 3)")
    assert in_cli_words(err) == str(err) == "Hessian must be square, got shape (2, 3)"
    assert in_cli_words(RealignError("plain")) == "plain"


def test_no_pure_module_names_a_command_line_option():
    for path in sorted(OPS.glob("*.py")):
        assert not re.search(r"--[a-z]", path.read_text(encoding="utf-8")), path.name
