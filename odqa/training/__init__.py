"""Trainers for the small modules around the frozen backbone (soft prompts, re-ranker, ...).

Shared pieces: :mod:`.frozen` (the weight-hash proof), :mod:`.artifacts` (safetensors +
``manifest.json``), :mod:`.checkpoints` (atomic, resumable training state), :mod:`.data`
(training examples: synthetic cloze, DPR training json, NQ-open jsonl).
"""
