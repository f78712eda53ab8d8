"""Runners: load one artifact in its real runtime and call it like a function of tensors."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch


class ExecuTorchRunner:
    """A ``.pte`` loaded by the ExecuTorch runtime (the same runtime an app links)."""

    def __init__(self, path: Path):
        from executorch.runtime import Runtime

        self.path = Path(path)
        self.program = Runtime.get().load_program(self.path)
        self.method = self.program.load_method("forward")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        outs = self.method.execute([t.contiguous() for t in inputs])
        return outs[0]


class EagerRunner:
    """A torch module (or GraphModule) called eagerly, under no_grad."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.module(*inputs)
        return out[0] if isinstance(out, (tuple, list)) else out


RUNNERS = {"executorch": ExecuTorchRunner}


def open_runner(kind: str, path: Path):
    return RUNNERS[kind](path)


def median_latency_ms(fn, inputs, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn(*inputs)`` over warm repeats."""
    for _ in range(warmup):
        fn(*inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*inputs)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)
