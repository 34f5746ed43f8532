"""Finding files in the folders datasets ship as: case-insensitive names, spelling variants."""

from __future__ import annotations

import os
import re


def children(folder: str) -> list[str]:
    """Sorted entry names of `folder` (hidden ones left out); [] if it is not a folder."""
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError:
        return []


def find_child(folder: str, pattern: str, want_dir: bool | None = None) -> str | None:
    """Path of the first entry of `folder` whose whole name matches `pattern`, ignoring case.

    `want_dir`: True for folders only, False for files only, None for either.
    """
    rx = re.compile(pattern, re.IGNORECASE)
    for name in children(folder):
        path = os.path.join(folder, name)
        if rx.fullmatch(name) and (want_dir is None or os.path.isdir(path) == want_dir):
            return path
    return None


def dataset_root(manual_dir: str, marker: str) -> str | None:
    """`manual_dir` if it holds an entry matching `marker`, else its one sub-folder that does.

    Users point `--manual_dir` at the dataset's root or at the folder above it.
    """
    if find_child(manual_dir, marker) is not None:
        return manual_dir
    hits = [os.path.join(manual_dir, n) for n in children(manual_dir)
            if os.path.isdir(os.path.join(manual_dir, n))
            and find_child(os.path.join(manual_dir, n), marker) is not None]
    return hits[0] if len(hits) == 1 else None
