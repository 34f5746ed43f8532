"""How every benchmark reports a measurement: a `RESULT {json}` line, and a JSON line in `--out`."""

from __future__ import annotations

import json
import os


def emit(result: dict, out: str = "") -> None:
    """Print `result` as a `RESULT` line; append it to the JSON-lines file `out` if given."""
    print("RESULT " + json.dumps(result), flush=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
