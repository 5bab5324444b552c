"""Evaluation: benchmark items, R1V's prompts, answer extraction and scoring, and the harness that runs
a model over a benchmark (``python -m r1v.eval``)."""
