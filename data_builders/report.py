"""What a build skipped or repaired, and why: problems by file, counts, one summary.

Builders never stop on one bad file: they record a `Problem` (the file and the
reason), skip or repair what it touches, and go on; a video or sequence left out
(`skip`) is also counted in `videos_skipped`. Counts (videos built, frames with
labels but no image, frames where no face was found, ...) accumulate beside them,
with `warnings` (built, but the user should know: e.g. frames stretched to a square)
and `notes` (which layout variant a builder found). `summary()` is the text printed
at the end of `auvmae build-data`.
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
    """Problems, warnings, notes and counts of one build; reports of workers `merge` into it."""

    problems: list[Problem] = dataclasses.field(default_factory=list)
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    warnings: list[Problem] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(str(path), " ".join(str(reason).split())))

    def skip(self, path: str, reason: str) -> None:
        """A video or sequence left out of the build: a problem, counted in `videos_skipped`."""
        self.problem(path, reason)
        self.count("videos_skipped")

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(Problem(str(path), " ".join(str(reason).split())))

    def note(self, text: str) -> None:
        self.notes.append(" ".join(str(text).split()))

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] += n

    def merge(self, other: BuildReport) -> None:
        self.problems.extend(other.problems)
        self.counts.update(other.counts)
        self.warnings.extend(other.warnings)
        self.notes.extend(other.notes)

    def to_json(self) -> dict:
        return {"problems": [[p.path, p.reason] for p in self.problems], "counts": dict(self.counts),
                "warnings": [[p.path, p.reason] for p in self.warnings], "notes": list(self.notes)}

    @classmethod
    def from_json(cls, d: dict) -> BuildReport:
        return cls([Problem(path, reason) for path, reason in d["problems"]],
                   collections.Counter(d["counts"]),
                   [Problem(path, reason) for path, reason in d.get("warnings", [])],
                   list(d.get("notes", [])))

    def summary(self, max_problems: int = 50) -> str:
        """Notes (layout found), counts, then every problem and warning (up to `max_problems` each)."""
        lines = ["build summary:"]
        lines += [f"  found: {n}" for n in self.notes]
        lines += [f"  {key}: {self.counts[key]}" for key in sorted(self.counts)]
        for title, entries in (("problems", self.problems), ("warnings", self.warnings)):
            if title == "warnings" and not entries:
                continue
            lines.append(f"  {title}: {len(entries)}")
            lines += [f"    {p}" for p in entries[:max_problems]]
            if len(entries) > max_problems:
                lines.append(f"    ... and {len(entries) - max_problems} more")
        return "\n".join(lines)
