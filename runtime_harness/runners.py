"""Runners: load one artifact in its real runtime and call it like a function of tensors."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import statistics
import sys
import tempfile
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


def _runtime_failure(path: Path, where: str, e: Exception):
    """One line naming the artifact and the runtime it failed in (the runtime's own reason, squeezed)."""
    from lgc.compiler.errors import BuildError

    return BuildError(f"{path.name} failed in {where}: {' '.join(str(e).split())[:200]}")


class ExecuTorchRunner:
    """A ``.pte`` loaded by the ExecuTorch runtime (the same runtime an app links)."""

    def __init__(self, path: Path, feeders: dict[int, str] | None = None):
        """``feeders``: {forward input position: method name} for inputs another method of the program computes.

        Called with the component's own inputs (the U-Net's timestep where
        ``forward`` takes ``time_features``), the runner calls that method on
        the value at that position, once per distinct value, as an app keeps
        one row per sampler step: ``forward`` alone is the per-step cost.
        """
        from executorch.runtime import Runtime

        self.path = Path(path)
        with _cpuinfo_notices_dropped():
            register_quantized_kernels()
            self.program = Runtime.get().load_program(self.path)
            self.method = self.program.load_method("forward")
            self.feeders = {i: self.program.load_method(name) for i, name in (feeders or {}).items()}
        self.rows: dict[tuple, torch.Tensor] = {}

    def _execute(self, method, inputs):
        try:
            return method.execute([t.contiguous() for t in inputs])[0]
        except RuntimeError as e:
            # The runtime logs its reason on stderr just above; keep the line short and name the artifact.
            raise _runtime_failure(self.path, "the ExecuTorch runtime", e) from e

    def forward_inputs(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """What ``forward`` takes, given the component's own inputs."""
        inputs = list(inputs)
        for i, method in self.feeders.items():
            key = (i, tuple(inputs[i].reshape(-1).tolist()))
            if key not in self.rows:
                self.rows[key] = self._execute(method, [inputs[i]]).clone()
            inputs[i] = self.rows[key]
        return inputs

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._execute(self.method, self.forward_inputs(*inputs) if self.feeders else inputs)


class CoreMLRunner:
    """A ``.mlpackage``: Core ML's own ``predict`` on macOS, lgc's MIL interpreter everywhere else.

    ``LGC_COREML_RUNNER=interpreter`` forces the interpreter on a Mac too (to compare the two).
    """

    def __init__(self, path: Path):
        import os
        import sys

        self.path = Path(path)
        self.model = None
        if sys.platform == "darwin" and os.environ.get("LGC_COREML_RUNNER", "predict") == "predict":
            import coremltools as ct

            self.model = ct.models.MLModel(str(self.path))
            spec = self.model.get_spec()
            self.input_names = [i.name for i in spec.description.input]
            self.output_names = [o.name for o in spec.description.output]
        else:
            from lgc.runtime_harness.coreml.program import MilProgram

            self.program = MilProgram(self.path)
        self.backend = "predict" if self.model is not None else "mil-interpreter"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.model is not None:
            feeds = {n: t.numpy() for n, t in zip(self.input_names, inputs)}
            return torch.from_numpy(self.model.predict(feeds)[self.output_names[0]]).float()
        try:
            return self.program(*inputs)[0].float()
        except RuntimeError as e:
            raise _runtime_failure(self.path, "lgc's Core ML interpreter", e) from e


class ExecuTorchCoreMLRunner:
    """A ``.pte`` whose program is one Core ML delegate call (profile ios-et).

    The ExecuTorch runtime for Linux has no Core ML backend, so the runner
    reads the ``.pte`` itself: it checks the method is nothing but that one
    delegate call (anything else would need a runtime that is not here),
    unpacks the delegate's payload — the ``.mlpackage`` the Core ML backend
    loads on device, flattened by executorchcoreml — and runs it with
    :class:`CoreMLRunner` (Core ML ``predict`` on macOS, the MIL interpreter elsewhere).
    """

    def __init__(self, path: Path):
        import json
        import tempfile

        from executorch.backends.apple.coreml import executorchcoreml
        from executorch.exir._serialize._program import deserialize_pte_binary

        from lgc.compiler.errors import UnsupportedModelError

        self.path = Path(path)
        program = deserialize_pte_binary(self.path.read_bytes()).program
        plan = program.execution_plan[0]
        instructions = [type(i.instr_args).__name__ for chain in plan.chains for i in chain.instructions]
        if instructions != ["DelegateCall"] or [d.id for d in plan.delegates] != ["CoreMLBackend"]:
            raise UnsupportedModelError(f"{self.path.name}: not a single Core ML delegate call ({', '.join(instructions)}); "
                                        f"lgc can only run that form of an ios-et artifact off-device")
        blob = program.backend_delegate_data[plan.delegates[0].processed.index].data
        self._tmp = tempfile.TemporaryDirectory(prefix="lgc-coreml-delegate-")
        if not executorchcoreml.unflatten_directory_contents(bytes(blob), self._tmp.name):
            raise UnsupportedModelError(f"{self.path.name}: the Core ML delegate payload could not be unpacked")
        lowered = Path(self._tmp.name) / "lowered_module"
        self.inner = CoreMLRunner(lowered / "model.mlpackage")
        self.backend = self.inner.backend
        # The delegate takes its inputs in its own order (its graph's placeholders, e.g. timestep before
        # sample): the DelegateCall names them by value index, which the method's inputs also use.
        n_in = len(json.loads((lowered / "metadata.json").read_text())["inputNames"])
        call = plan.chains[0].instructions[0].instr_args
        self.order = [list(plan.inputs).index(v) for v in call.args[:n_in]]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(*[inputs[i] for i in self.order])


class TVMRunner:
    """A component folder emitted by lgc's TVM target: a Relax VM executable with its weights bound in."""

    def __init__(self, path: Path):
        import tvm
        from tvm import relax

        from lgc.compiler.errors import UnsupportedModelError
        from lgc.targets.tvm.emit import library_name
        from lgc.targets.tvm.threads import use_physical_cores

        use_physical_cores()  # else TVM runs on half the cores of an x86 machine without SMT

        self.path = Path(path)
        lib = self.path / library_name({"os": "host"})
        if not lib.is_file():
            raise UnsupportedModelError(f"{self.path.name}: no host library (module.so); an arm64 archive does not run on "
                                        f"this machine: check the tvm-host twin of the same build instead")
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        self._tvm = tvm

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.vm["main"](*[self._tvm.runtime.tensor(t.contiguous().numpy()) for t in inputs])
        first = out[0] if not hasattr(out, "numpy") else out
        return torch.from_numpy(first.numpy())

    def kernel_ms(self, *inputs: torch.Tensor, repeat: int = 10) -> dict[str, float]:
        """{kernel: ms per call of ``main``, summed over its calls}, slowest first: where tuning time pays.

        Timed around each VM call instruction (the VM's instrument hook), so
        the VM's own builtins (allocation, reshapes) are listed as well.
        """
        import collections
        import time

        args = [self._tvm.runtime.tensor(t.contiguous().numpy()) for t in inputs]
        self.vm["main"](*args)  # warm: first-call allocations are not a kernel's time
        spent, started = collections.Counter(), {}

        def instrument(func, symbol, before_run, ret_value, *call_args):
            if before_run:
                started[symbol] = time.perf_counter()
            else:
                spent[symbol] += time.perf_counter() - started[symbol]
            return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

        self.vm.set_instrument(instrument)
        try:
            for _ in range(repeat):
                self.vm["main"](*args)
        finally:
            self.vm.set_instrument(None)
        return {k: v * 1e3 / repeat for k, v in spent.most_common()}


class EagerRunner:
    """A torch module (or GraphModule) called eagerly, under no_grad."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.module(*inputs)
        return out[0] if isinstance(out, (tuple, list)) else out


# ExecuTorch's cpuinfo_utils logs its probing of the host on C++ stderr when the runtime and its first
# delegate load ("Reading file /sys/devices/soc0/image_version", "Failed to open midr file", "CPU info and
# manual query on # of cpus dont match"): facts about the host, nothing a user can act on.
_CPUINFO_NOTICE = re.compile(rb"^\[cpuinfo_utils\.cpp:\d+\] ")


@contextlib.contextmanager
def _cpuinfo_notices_dropped():
    """Run with the process's stderr (fd 2) captured; pass everything on but cpuinfo's host notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [ln for ln in captured.read().splitlines(keepends=True) if not _CPUINFO_NOTICE.match(ln)]
            if kept:
                os.write(2, b"".join(kept))


RUNNERS = {"executorch": ExecuTorchRunner, "executorch-coreml": ExecuTorchCoreMLRunner, "coreml": CoreMLRunner, "tvm": TVMRunner}


def feeders(entry: dict | None) -> dict[int, str]:
    """{forward input position: method} from a manifest component entry's ``methods``."""
    names = [i["name"] for i in (entry or {}).get("inputs", [])]
    return {names.index(m["feeds"]): name for name, m in (entry or {}).get("methods", {}).items()}


def open_runner(kind: str, path: Path, entry: dict | None = None):
    """The artifact at ``path`` in its runtime; ``entry``, its manifest entry, says which methods feed ``forward``."""
    found = feeders(entry)
    if found and kind != "executorch":
        from lgc.compiler.errors import UsageError

        raise UsageError(f"{Path(path).name}: methods other than forward are only run for ExecuTorch (XNNPACK) artifacts, not {kind}")
    return RUNNERS[kind](path, found) if found else RUNNERS[kind](path)


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
