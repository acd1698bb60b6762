"""Multi-turn evaluation harness (``python -m rl2f_plugin.eval``): runs rl2f's agent loops outside training
against a local HF checkpoint or an OpenAI-compatible endpoint, writes JSONL transcripts, a cumulative-accuracy
table with bootstrap CIs and a Figure-4-style plot. See `rl2f_plugin.eval.__main__` for the command line.

Importing this package is cheap; the heavy modules (transformers, verl) are imported by its submodules."""

__all__ = ["backends", "report", "runner", "transcript"]
