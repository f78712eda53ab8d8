"""Runners: load one artifact in its real runtime and call it like a function of tensors."""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def register_quantized_kernels() -> None:
    """Register ExecuTorch's quantized kernel library in the Python runtime.

    The pybinding runtime holds portable kernels only; an app links
    ``quantized_ops_lib`` for ``quantized_decomposed::embedding_byte`` & co.
    The wheel ships that library, which registers its kernels on load (once
    per process: loading it twice would register them twice).
    """
    import ctypes

    import executorch
    from executorch.extension.pybindings import portable_lib  # noqa: F401  (the registry it adds to)

    lib = Path(executorch.__path__[0]) / "lib" / "libexecutorch_kernels_quantized.so"
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


class ExecuTorchRunner:
    """A ``.pte`` loaded by the ExecuTorch runtime (the same runtime an app links)."""

    def __init__(self, path: Path):
        from executorch.runtime import Runtime

        register_quantized_kernels()
        self.path = Path(path)
        self.program = Runtime.get().load_program(self.path)
        self.method = self.program.load_method("forward")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        try:
            outs = self.method.execute([t.contiguous() for t in inputs])
        except RuntimeError as e:
            from lgc.compiler.errors import BuildError

            # The runtime logs its reason on stderr just above; keep the line short and name the artifact.
            raise BuildError(f"{self.path.name} failed in the ExecuTorch runtime: {' '.join(str(e).split())[:200]}") from e
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
