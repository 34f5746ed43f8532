"""Experiment configs: `get_config(arg)` in each file, picked with `--config=configs/FILE.py:ARG`."""
