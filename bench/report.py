"""Results of the receive benchmark and the Markdown table they are printed as.

Kept apart from ``run.py`` (which starts processes and times them) so the
arithmetic, medians and ratios, reads on its own.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# Ratio columns: the adapter's throughput over each of these, same corpus and mode,
# on the rows of either ledger (SUBJECTS).
REFERENCES = ("storescp", "minimal", "orthanc")
SUBJECT = "adapter"
SUBJECTS = (SUBJECT, "adapter-pg")


class Throughput:
    """Median time, instances/s and MB/s of repeated runs over the same files."""

    count: int
    size: int  # bytes
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def rate(self) -> float:
        return self.count / self.median

    @property
    def mbps(self) -> float:
        return self.size / 1e6 / self.median


@dataclass
class Result(Throughput):
    """Every repetition of one receiver, one corpus, one number of associations."""

    corpus: str
    receiver: str
    assocs: int
    count: int
    size: int
    times: list[float] = field(default_factory=list)
    drains: list[float] = field(default_factory=list)  # sender exit -> last ledger row
    lag_medians: list[float] = field(default_factory=list)  # per run, per instance
    lag_p99s: list[float] = field(default_factory=list)

    def last(self) -> str:
        """The latest repetition, for the progress line."""
        text = f"{self.times[-1]:.2f}s"
        if self.drains:
            text += (
                f", lag median {self.lag_medians[-1] * 1000:.0f} ms"
                f" p99 {self.lag_p99s[-1] * 1000:.0f} ms, drain {self.drains[-1] * 1000:.0f} ms"
            )
        return text


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}" if values else ""


def _ratios(result: Result, by: dict[tuple[str, int, str], Result]) -> list[str]:
    cells = []
    for ref in REFERENCES:
        other = by.get((result.corpus, result.assocs, ref))
        if result.receiver in SUBJECTS and other is not None:
            cells.append(f"{result.rate / other.rate:.2f}")
        else:
            cells.append("")
    return cells


HEADER = (
    "| corpus | assocs | receiver | instances | MB | median s | inst/s | MB/s "
    + "".join(f"| {SUBJECT}/{ref} " for ref in REFERENCES)
    + "| lag ms median | lag ms p99 | drain ms |\n"
    + "|---|--:|---|--:|--:|--:|--:|--:|"
    + "--:|" * len(REFERENCES)
    + "--:|--:|--:|"
)


def table(results: list[Result]) -> str:
    """One Markdown row per result; ratios on the adapter's rows only (either ledger)."""
    by = {(r.corpus, r.assocs, r.receiver): r for r in results}
    lines = [HEADER]
    for r in results:
        cells = [
            r.corpus, str(r.assocs), r.receiver, str(r.count), f"{r.size / 1e6:.1f}",
            f"{r.median:.2f}", f"{r.rate:.0f}", f"{r.mbps:.1f}", *_ratios(r, by),
            ms(r.lag_medians), ms(r.lag_p99s), ms(r.drains),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
