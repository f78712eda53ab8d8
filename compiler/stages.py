"""Where a build's time and memory go: wall time and peak resident memory per stage, for report.json."""

from __future__ import annotations

import resource
import sys
import time


def peak_rss_mib() -> float:
    """The process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


class StageClock:
    """Progress steps that are also stage boundaries: each step closes the previous stage.

    ``step(message)`` shows the message (through ``show``) and starts a stage
    named by it; ``records`` lists each closed stage with its wall seconds and
    the process's peak RSS when it ended (a running peak: the stage where it
    jumps is the one that needed the memory).
    """

    def __init__(self, show):
        self.show = show
        self.records: list[dict] = []
        self._open: tuple[str, float] | None = None

    def step(self, message: str) -> None:
        self._close()
        self._open = (message, time.perf_counter())
        self.show(message)

    def _close(self) -> None:
        if self._open is not None:
            name, t0 = self._open
            self.records.append({"stage": name, "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": peak_rss_mib()})
            self._open = None

    def finish(self) -> list[dict]:
        self._close()
        return self.records
