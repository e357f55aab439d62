"""Evaluation: the harness (:mod:`~odqa.eval.harness`, every stage scored by NQ conventions),
retrieval-only scoring of DPR result files (:mod:`~odqa.eval.retrieval`), multitask scoring for
ID-PT (:mod:`~odqa.eval.multitask`), and the reports and plots (:mod:`~odqa.eval.report`).
The metrics themselves are :mod:`odqa.metrics`."""
