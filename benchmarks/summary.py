"""One summary block per benchmark run, the same shape for every script, and its ``--check`` verdict.

A figure read later (in the README, in a review) needs the command that produced it, the machine's
load while it ran, the backend it measured and the baseline beside it. Every script collects its
figures here and prints one block at the end that can be pasted as it is; a missed target is
printed as MISSED and, with ``--check``, makes the exit status non-zero.
"""

from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def peak_rss_bytes(pid: int | str = "self") -> int:
    """A live process's own peak resident set (``VmHWM``; this process by default), 0 where /proc is missing.

    Not ``ru_maxrss``: Linux carries the peak of the process a child was forked from into the
    child's ``ru_maxrss`` (through fork and exec), so a run started by a big benchmark process would
    report the benchmark's peak as its own.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def runs(values: Iterable[float], fmt: str = ",.0f") -> str:
    return " / ".join(format(v, fmt) for v in values)


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least the first value
    return ordered[int(min(rank, len(ordered))) - 1]


@dataclass
class Summary:
    """Figures and targets of one run; :meth:`finish` prints the block and returns the exit status."""

    name: str
    note: str = ""
    lines: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool, str]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_at_start: str = field(default_factory=load_average)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def target(self, what: str, met: bool, measured: str) -> None:
        """A target, what was measured against it and whether it was met."""
        self.targets.append((what, met, measured))

    @property
    def missed(self) -> list[str]:
        return [what for what, met, _ in self.targets if not met]

    def finish(self, check: bool) -> int:
        command = " ".join(
            ["python", *map(shlex.quote, ["benchmarks/" + os.path.basename(sys.argv[0]), *sys.argv[1:]])]
        )
        print(f"\n===== {self.name}: summary =====")
        print(f"command: {command}")
        print(
            f"when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(self.started))}, "
            f"{time.time() - self.started:.0f} s; {os.cpu_count()} cores; "
            f"load average at start {self.load_at_start}, at end {load_average()}"
        )
        if self.note:
            print(self.note)
        for text in self.lines:
            print(text)
        for what, met, measured in self.targets:
            print(f"target {what}: {'met' if met else 'MISSED'} ({measured})")
        if not self.targets:
            print("targets: none")
        verdict = "all targets met" if not self.missed else "MISSED: " + "; ".join(self.missed)
        print(f"verdict: {verdict}")
        print("=" * (len(self.name) + 22))
        sys.stdout.flush()
        return 1 if check and self.missed else 0
