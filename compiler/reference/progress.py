"""Progress for long training loops: a rich bar on a terminal, periodic lines in logs."""

from __future__ import annotations

import sys
import time


class StepLogger:
    def __init__(self, name: str, total: int, start: int = 0, every: int = 50):
        self.name, self.total, self.every = name, total, every
        self.t0 = time.perf_counter()
        self.start = start
        self.progress = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.progress = Progress(transient=False)
            self.progress.start()
            self.task = self.progress.add_task(name, total=total, completed=start)

    def step(self, n: int, **metrics) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.progress is not None:
            self.progress.update(self.task, completed=n, description=f"{self.name} {text}")
        elif n % self.every == 0 or n == self.total:
            rate = (time.perf_counter() - self.t0) / max(1, n - self.start)
            print(f"[{self.name}] {n}/{self.total} {text} ({rate:.2f} s/step)", flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
