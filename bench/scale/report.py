"""One part's figures: rows of a printed table, data for the results JSON, and the invariants
that failed (a part with problems fails the run, so the smoke test can fail)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Part:
    name: str
    title: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, what: str, measured: str, target: str = "", note: str = "") -> None:
        self.rows.append((what, measured, target, note))

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok

    def print(self) -> None:
        print(f"\n== {self.title} ({self.seconds:.0f} s) ==")
        head = ("what", "measured", "target", "note")
        width = [min(60, max(len(h), *(len(r[i]) for r in self.rows))) if self.rows else len(h)
                 for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, width, strict=True)).rstrip())
        print("  ".join("-" * w for w in width))
        for r in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip())
        for p in self.problems:
            print(f"PROBLEM: {p}")
        print(flush=True)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "seconds": self.seconds, "problems": self.problems,
                "table": [dict(zip(("what", "measured", "target", "note"), r, strict=True))
                          for r in self.rows], **self.data}


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def sec(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def mib(value: float) -> str:
    return f"{value:.0f} MiB"
