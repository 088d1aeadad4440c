"""The benchmark harness (`python bench/run.py`); see bench/README.md. Not part of the `rlhf` package."""
