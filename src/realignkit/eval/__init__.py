"""Evaluation: harmfulness, over-refusal and utility of a model, with pluggable judges.

The Python API mirrors ``realignkit eval`` / ``judge`` / ``compare``::

    from realignkit.eval import evaluate
    summary = evaluate("runs/finetuned", safety=["catqa_english", "xstest"],
                       utility=["gsm8k"], out_dir="reports/finetuned", limit=100)
    summary["metrics"]["catqa_english"]["harmfulness"]

Modules: ``benchmarks`` (what to ask), ``generate`` (HF / vLLM backends, cache),
``judges`` and ``keyword`` (refusal and harm verdicts), ``gsm8k``, ``humaneval`` (sandbox),
``scoring`` (metrics), ``report`` (files, comparison, plot), ``runner`` (the pipeline).
"""

from realignkit.eval.runner import compare_reports, evaluate, judge_file

__all__ = ["compare_reports", "evaluate", "judge_file"]
