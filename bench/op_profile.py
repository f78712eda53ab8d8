"""Where an ExecuTorch artifact spends its time: XNNPACK operator times from ExecuTorch's own event trace (ETDump).

    python bench/op_profile.py build/android-fp32/unet.pte
    python bench/op_profile.py build/bench-models/sd15-arch-v1-unet/android-fp32/unet.pte --model sd15-arch

Runs the component's example inputs through the ``.pte`` with ExecuTorch's
event tracer on (the pip wheel's runtime records each XNNPACK operator),
reads the trace with ``executorch.devtools.Inspector`` and prints, per kind of
XNNPACK operator (``Convolution (NHWC, F32) IGEMM``, ``Fully Connected (NC,
QD8, F32, QC8W) GEMM``, ...), how many run and their milliseconds per call,
slowest first. Profiling adds a little time to each operator; the shares are
what it is for. ``--json`` writes the table.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Events that wrap the operators (the delegate call, the method) rather than being one.
WRAPPERS = ("Method::", "Program::", "DELEGATE_CALL")


def operator_times(pte: Path, inputs: tuple, calls: int) -> dict[str, tuple[int, float]]:
    """{XNNPACK operator kind: (operators of that kind, ms per call summed over them)} of ``pte`` on ``inputs``."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    module = _load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=0)
    for _ in range(calls + 1):  # the first call also pays XNNPACK's lazy set-up
        module.forward(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.etdp"
        module.write_etdump_result_to_file(str(trace))
        inspector = Inspector(etdump_path=str(trace))
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or event.name.startswith(WRAPPERS):
                continue
            # Each run of an event is one call; drop the first (set-up) and average the rest.
            runs = list(event.perf_data.raw)[1:] or list(event.perf_data.raw)
            kind = kinds[re.sub(r" #\d+$", "", event.name)]
            kind[0] += 1
            kind[1] += sum(runs) / len(runs)
    return {k: (n, ms) for k, (n, ms) in kinds.items()}


def forward_inputs(pte: Path, component: str, inputs: tuple) -> tuple:
    """The inputs of the program's ``forward``: a method that computes one of them (the U-Net's time_features) runs first.

    Which method feeds which input is in the bundle's manifest next to the
    ``.pte``, or in the build record ``bench/compile.py`` keeps beside it.
    """
    from lgc.runtime_harness.runners import ExecuTorchRunner, feeders

    manifest, record = pte.parent / "manifest.json", pte.with_suffix(".json")
    entry = (json.loads(manifest.read_text())["components"].get(component) if manifest.exists()
             else json.loads(record.read_text()).get("runner_entry") if record.exists() else None)
    found = feeders(entry)
    return tuple(ExecuTorchRunner(pte, found).forward_inputs(*inputs)) if found else inputs


def example_inputs(model: str, component: str) -> tuple:
    from lgc.compiler.model_import import load_pipeline

    if model == "sd15-arch":
        sys.path.insert(0, str(REPO / "bench"))
        from sd15_arch import ensure_folder

        folder = ensure_folder(REPO / "build" / "bench-models", lambda m: print(m, file=sys.stderr))
    else:
        from lgc.compiler.build import DEFAULT_MODEL

        folder = DEFAULT_MODEL
    return tuple(load_pipeline(folder, (component,), None).components[component].example_inputs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pte", type=Path, help="an ExecuTorch program lgc built")
    ap.add_argument("--model", default="reference", choices=["reference", "sd15-arch"], help="whose example inputs to feed")
    ap.add_argument("--component", default="unet")
    ap.add_argument("--calls", type=int, default=3, help="timed calls after a warm-up call")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    inputs = forward_inputs(args.pte, args.component, example_inputs(args.model, args.component))
    times = operator_times(args.pte, inputs, args.calls)
    total = sum(ms for _, ms in times.values())
    table = Table(title=f"{args.pte} ({args.component}): {total:.1f} ms per call in XNNPACK operators")
    for col in ("operator", "count", "ms per call", "share"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    for kind, (n, ms) in sorted(times.items(), key=lambda kv: -kv[1][1]):
        table.add_row(kind, str(n), f"{ms:.1f}", f"{ms / total:.1%}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"pte": str(args.pte), "total_ms": round(total, 2),
                                         "operators": {k: {"count": n, "ms": round(ms, 3)} for k, (n, ms) in times.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
