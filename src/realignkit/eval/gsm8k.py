"""GSM8K answer extraction and comparison.

The rule (the usual one): the model's answer is the first number after ``####`` when the
response has one, else the last number in the response. Numbers are compared as decimals
after removing thousands separators, currency signs and a trailing full stop, so ``$1,000``,
``1000`` and ``1000.00`` are the same answer. The reference is the number after ``####`` in
the data set's ``answer`` field.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _clean(number: str) -> str | None:
    text = number.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.to_integral_value())
    return str(value.normalize())


def extract_answer(response: str) -> str | None:
    """The numeric answer of a response (see the module docstring), or None if it has none."""
    if "####" in response:
        after = response.split("####", 1)[1]
        found = _NUMBER.search(after)
        if found:
            return _clean(found.group(0))
    numbers = _NUMBER.findall(response)
    return _clean(numbers[-1]) if numbers else None


def reference_answer(answer_field: str) -> str:
    """The reference number of a GSM8K ``answer`` field (the text after ``####``)."""
    tail = answer_field.split("####")[-1].strip()
    cleaned = _clean(tail)
    return cleaned if cleaned is not None else tail


def is_correct(response: str, reference: str) -> bool:
    """True when the response's extracted answer equals the reference number."""
    predicted = extract_answer(response)
    return predicted is not None and predicted == _clean(reference)
