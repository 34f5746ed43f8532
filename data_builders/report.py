"""What a build skipped or repaired, and why: problems by file, counts, one summary.

Builders never stop on one bad file: they record a `Problem` (the file and the
reason), skip or repair what it touches, and go on. Counts (videos built, frames
with labels but no image, frames where no face was found, ...) accumulate beside
them. `summary()` is the text printed at the end of `auvmae build-data`.
"""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
    """One file that was skipped or repaired: its path and the reason, in one line."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class BuildReport:
    """Problems and counts of one build; reports of worker processes `merge` into it."""

    problems: list[Problem] = dataclasses.field(default_factory=list)
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(str(path), " ".join(str(reason).split())))

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] += n

    def merge(self, other: BuildReport) -> None:
        self.problems.extend(other.problems)
        self.counts.update(other.counts)

    def to_json(self) -> dict:
        return {"problems": [[p.path, p.reason] for p in self.problems], "counts": dict(self.counts)}

    @classmethod
    def from_json(cls, d: dict) -> BuildReport:
        return cls([Problem(path, reason) for path, reason in d["problems"]],
                   collections.Counter(d["counts"]))

    def summary(self, max_problems: int = 50) -> str:
        """Counts, then every problem (up to `max_problems`, then how many more)."""
        lines = ["build summary:"]
        lines += [f"  {key}: {self.counts[key]}" for key in sorted(self.counts)]
        lines.append(f"  problems: {len(self.problems)}")
        lines += [f"    {p}" for p in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"    ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)
