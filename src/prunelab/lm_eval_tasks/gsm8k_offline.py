"""Document processing for the offline ``gsm8k`` task (referenced by ``gsm8k.yaml``).

The offline questions are split as in :mod:`prunelab.data`: the first 1,000 problems are the
calibration part (few-shot exemplars here), the last 319 the evaluation part (scored). Answers
hold the final number only; they are written as ``#### <number>``, the form the stock task's
metric and strict-match filter expect.
"""

from __future__ import annotations

import datasets

CALIBRATION_PROBLEMS = 1000  # prunelab.data splits the offline GSM8K set at the same index


def _with_marked_answers(rows: datasets.Dataset) -> datasets.Dataset:
    return rows.map(lambda row: {"answer": f"#### {str(row['answer']).strip()}"})


def calibration_part(rows: datasets.Dataset) -> datasets.Dataset:
    return _with_marked_answers(rows.select(range(min(CALIBRATION_PROBLEMS, len(rows)))))


def evaluation_part(rows: datasets.Dataset) -> datasets.Dataset:
    return _with_marked_answers(rows.select(range(CALIBRATION_PROBLEMS, len(rows))))
