"""Speed benchmark: each component in eager torch, ONNX Runtime, and lgc's ExecuTorch and TVM artifacts, side by side in one run.

    python bench/speed.py --model reference            # the reference model's three components
    python bench/speed.py --model reference --json bench/speed.json
    python bench/speed.py --model sd15-arch --json sd15.json   # SD-1.5-architecture U-Net step (random weights)

Every runtime gets the same component and the same inputs; timings are
interleaved (one call of each runtime per round, rounds repeated) so that the
noise of a shared machine falls on all of them alike, and each latency is
reported as a median and as a ratio to ONNX Runtime fp32 (the runtime a user
would pick instead). Delegation counts come from the lgc build reports.
With ``--model sd15-arch`` only the U-Net step is timed (an 859.5 M-parameter
U-Net, 64x64 latents, batch 2): its android-fp32/int8 ``.pte`` files come from
``bench/compile.py``'s cold builds (kept and reused while lgc's commit is the
same; their build seconds and peak memory go into the JSON), and TVM is left
out (tuning a U-Net of that size is hours, not a benchmark run).
This is a benchmark, not a test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def ort_session(module, inputs, names, folder: Path):
    """``module`` exported to ONNX (TorchScript exporter), simplified with onnxsim, in an ONNX Runtime CPU session."""
    import onnx
    import onnxruntime as ort
    import onnxsim

    path = folder / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(module, inputs, str(path), input_names=names, output_names=["out"], dynamo=False, opset_version=17)
    if len(list(folder.iterdir())) > 1:
        # Over protobuf's 2 GiB the exporter writes the weights as external data, and onnxsim,
        # which serialises the whole model to one protobuf, cannot take it. ONNX Runtime's own
        # session optimisations (constant folding, fusions) still run.
        ok = "skipped: model over 2 GiB"
    else:
        model, ok = onnxsim.simplify(onnx.load(str(path)))
        if ok:
            onnx.save(model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in zip(names, inputs)}
    return lambda: sess.run(None, feeds), ok


def interleaved_medians(fns: dict, rounds: int, block: int = 5, settle_s: float = 0.1) -> dict:
    """Median per-call latency of each runtime, measured in alternating blocks of ``block`` calls.

    Blocks, not single calls, with a pause of ``settle_s`` before each:
    runtimes keep worker threads spinning for a while after a call returns
    (ONNX Runtime, XNNPACK, TVM's pool), and on a 2-core machine a
    neighbour's spinning threads are timed as the next runtime's latency.
    Dropping the first call of a block was not enough: ExecuTorch's U-Net
    read 17.1 ms right after ONNX Runtime's block and 8.6 ms after TVM's. The
    pause lets them go to sleep; alternating blocks still spreads machine
    noise over all runtimes.
    """
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(max(1, rounds // block)):
        for k, fn in fns.items():
            time.sleep(settle_s)
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def time_component(comp, runners: dict, work_dir: Path, rounds: int, block: int = 5) -> tuple[dict, bool | str]:
    """Median latency (ms) of one component in eager torch, ONNX Runtime and each of ``runners``, side by side,
    on the component's example inputs; and what became of onnxsim (see ort_session)."""
    inputs = tuple(comp.example_inputs)
    eager = comp.module.eval()
    fns = {"eager_fp32": lambda: eager(*inputs)}
    fns["ort_fp32"], simplified = ort_session(eager, inputs, list(comp.input_names), work_dir)
    for key, runner in runners.items():
        fns[key] = (lambda r: lambda: r(*inputs))(runner)
    with torch.no_grad():
        return interleaved_medians(fns, rounds, block=block), simplified


def latency_fields(ms: dict, digits: int) -> dict:
    """The JSON's latency figures: each median, and its ratio to ONNX Runtime fp32."""
    ort = ms["ort_fp32"]
    return {"latency_ms_median": {k: round(v, digits) for k, v in ms.items()},
            "ratio_to_ort_fp32": {k: round(v / ort, 3) for k, v in ms.items()}}


# lgc bundles benchmarked, by column key: (target, emit options, folder under --bundles). tvm-host
# twice: with the tuning records it finds (lgc's reference model ships them) and with none.
TARGET_COLUMNS = {"lgc_fp32": ("android-fp32", {}, "."), "lgc_int8": ("android-int8", {}, "."),
                  "lgc_tvm_untuned": ("tvm-host", {"tuning_records": False}, "untuned"),
                  "lgc_tvm_tuned": ("tvm-host", {"tuning_records": True}, ".")}


def ensure_bundles(out: Path, model: Path | None) -> dict:
    """A bundle of ``model`` per benchmarked target under ``out`` (built if missing or of another model)."""
    from lgc.compiler import manifest as manifest_mod
    from lgc.compiler.build import DEFAULT_MODEL, build
    from lgc.compiler.model_import import folder_sha256
    from lgc.compiler.ui import UI

    sha = folder_sha256(model or DEFAULT_MODEL)
    bundles = {}
    for key, (target, emit_options, under) in TARGET_COLUMNS.items():
        root = out / under
        folder = root / target
        try:
            built = manifest_mod.load(folder)
            # Same model, and built with this column's emit options (an untuned TVM bundle is not a tuned one).
            fresh = built["model"]["sha256"] == sha and all(
                built["profile"]["emit_options"].get(k) == v for k, v in (emit_options or {}).items())
        except Exception:
            fresh = False
        if not fresh:
            print(f"building {target} {emit_options or ''} into {root} ...", file=sys.stderr)
            build(model, target, root, UI(quiet=True), cache_dir=out / ".cache", emit_options=emit_options)
        bundles[key] = folder
    return bundles


def bench_reference(args) -> dict:
    from lgc.compiler import manifest as manifest_mod
    from lgc.compiler.build import DEFAULT_MODEL
    from lgc.compiler.model_import import load_pipeline
    from lgc.runtime_harness.runners import open_runner

    from lgc.targets.executorch.xnnpack_graph import delegate_ops

    bundles = ensure_bundles(Path(args.bundles), args.model_path)
    manifests = {k: manifest_mod.load(f) for k, f in bundles.items()}
    reports = {k: json.loads((f / "report.json").read_text()) for k, f in bundles.items()}
    model = load_pipeline(args.model_path or DEFAULT_MODEL, tuple(manifests["lgc_fp32"]["components"]), None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, comp in model.components.items():
            folder = Path(tmp) / name
            folder.mkdir()
            runners = {}
            for key in TARGET_COLUMNS:
                entry = manifests[key]["components"][name]
                runners[key] = open_runner(entry["runtime"], bundles[key] / entry["file"], entry)
            ms, simplified = time_component(comp, runners, folder, args.rounds)
            results[name] = {
                **latency_fields(ms, 3),
                "onnxsim": simplified,
                "delegation": {TARGET_COLUMNS[c][0]: {
                    **{k: reports[c]["components"][name].get(k) for k in ("delegate_subgraphs", "nondelegated_compute_ops", "nondelegated_ops")},
                    # layout work XNNPACK does inside the delegate, read from the .pte itself
                    "delegate_transposes": delegate_ops((bundles[c] / manifests[c]["components"][name]["file"]).read_bytes())["StaticTranspose"]}
                    for c in ("lgc_fp32", "lgc_int8")},
                # kernels compiled with a tuned schedule, of all kernels (the tuned column's records)
                "tvm_tuning": reports["lgc_tvm_tuned"]["components"][name].get("tuning"),
            }
    return results


def _lgc_commit() -> str | None:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return None if dirty else head  # uncommitted changes: nothing built before can be trusted


def sd15_artifacts(folder: Path, root: Path, rebuild: bool) -> dict:
    """android-fp32/int8 ``.pte`` of the SD-1.5-architecture U-Net, by column key: (path, compile record).

    Built by ``bench/compile.py``'s cold build, each in a fresh process, and
    kept under ``root``; a kept one is reused when it was built by the same lgc
    commit (a clean tree).
    """
    from compile import run_child

    commit = _lgc_commit()
    built = {}
    for key, target in (("lgc_fp32", "android-fp32"), ("lgc_int8", "android-int8")):
        pte = root / target / "unet.pte"
        record_path = pte.with_suffix(".json")
        record = json.loads(record_path.read_text()) if record_path.exists() and pte.exists() else {}
        if rebuild or commit is None or record.get("lgc_commit") != commit:
            print(f"building the {folder.name} U-Net -> {target} in a fresh process (minutes) ...", file=sys.stderr)
            record_path.unlink(missing_ok=True)
            record = run_child(folder, target, argparse.Namespace(steps=4, calibration_prompts=2, samples_per_timestep=2), keep=pte)
            if record.get("failed"):
                raise SystemExit(f"speed: building the U-Net for {target} failed (exit code {record['returncode']})")
            record["lgc_commit"] = commit
            record_path.write_text(json.dumps(record, indent=2) + "\n")
        built[key] = (pte, record)
    return built


def bench_sd15_arch(args) -> dict:
    from sd15_arch import ensure_folder

    from lgc.compiler.model_import import load_pipeline
    from lgc.runtime_harness.runners import open_runner

    folder = ensure_folder(args.models_dir, lambda m: print(m, file=sys.stderr))
    built = sd15_artifacts(folder, args.models_dir / f"{folder.name}-unet", args.rebuild)
    comp = load_pipeline(folder, ("unet",), None).components["unet"]
    runners = {key: open_runner("executorch", pte, record.get("runner_entry")) for key, (pte, record) in built.items()}
    print(f"timing {len(runners) + 2} runtimes, {args.rounds} calls each (seconds per call at this size) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        ms, simplified = time_component(comp, runners, Path(tmp), args.rounds, block=1)
    return {"unet": {
        **latency_fields(ms, 1),
        "onnxsim": simplified,
        "delegation": {r["target"]: r["delegation"] for _, r in built.values()},
        # the cold build that made each artifact: wall seconds and peak memory (bench/compile.py)
        "build": {r["target"]: {k: r.get(k) for k in ("seconds", "peak_rss_mib", "pte_bytes", "lgc_commit")} for _, r in built.values()},
        "tvm_tuning": None,
    }}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference", choices=["reference", "sd15-arch"], help="what to benchmark")
    ap.add_argument("--model-path", type=Path, default=None, help="a diffusers folder instead of lgc's reference model")
    ap.add_argument("--bundles", default=str(REPO / "build"), help="where the android-fp32/int8 and tvm-host bundles are (built if missing)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (one call of every runtime per round; default 30, sd15-arch 4)")
    ap.add_argument("--models-dir", type=Path, default=REPO / "build" / "bench-models", help="sd15-arch: where the model folder and its builds are kept")
    ap.add_argument("--rebuild", action="store_true", help="sd15-arch: rebuild the .pte files even if kept ones match this commit")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.rounds = args.rounds or (4 if args.model == "sd15-arch" else 30)
    results = {"model": args.model, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
               "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
               "components": bench_sd15_arch(args) if args.model == "sd15-arch" else bench_reference(args)}
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"speed, {args.model} (median ms; x = ratio to ONNX Runtime fp32)", title_justify="left")
    for col in ("component", "eager fp32", "ORT fp32", "lgc fp32", "lgc int8", "lgc TVM untuned", "lgc TVM tuned",
                "TVM kernels tuned", "delegates fp32/int8", "ops outside fp32/int8", "transposes in delegates fp32/int8"):
        t.add_column(col, justify="left" if col == "component" else "right")
    for name, r in results["components"].items():
        ms, x, d = r["latency_ms_median"], r["ratio_to_ort_fp32"], r["delegation"]
        tuning = r["tvm_tuning"] or {}
        t.add_row(name, *(f"{ms[k]:.2f} ({x[k]:.2f}x)" if k in ms else "-"
                          for k in ("eager_fp32", "ort_fp32", "lgc_fp32", "lgc_int8", "lgc_tvm_untuned", "lgc_tvm_tuned")),
                  f"{tuning.get('kernels_scheduled', 0)}/{tuning.get('kernels', 0) + tuning.get('kernels_hand_scheduled', 0) or '?'}" if tuning else "-",
                  *("/".join(str(d[target].get(k, "-")) for target in ("android-fp32", "android-int8"))
                    for k in ("delegate_subgraphs", "nondelegated_compute_ops", "delegate_transposes")))
    Console(width=160).print(t)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # sd15_arch, compile
    sys.exit(main())
