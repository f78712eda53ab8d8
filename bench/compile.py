"""Compile-time benchmark: wall time per stage and peak memory of lgc's android builds of a U-Net, each build in a fresh process.

    python bench/compile.py --model sd15-arch --json compile.json     # SD-1.5-architecture U-Net, random weights
    python bench/compile.py --model reference                          # lgc's reference model (seconds)

Each target (android-int8, android-fp32 by default) is built by a child
process that runs exactly what ``lgc build`` runs for the U-Net: import the
pipeline folder, torch.export, lgc's pass pipeline (with calibration for
int8), and the ExecuTorch/XNNPACK lowering, with an empty cache (a cold
build). Every stage's wall seconds and the process's running peak RSS after
it are recorded; lowering is split into export, edge decompositions,
partitioning, XNNPACK preprocess and serialization. A fresh process per
build keeps one build's peak memory out of the next one's figures.

The end-to-end harness run is not part of this benchmark: at SD-1.5 size it
is an image generation on the CPU, not compilation. The U-Net's activations
are quantized dynamically, so its calibration observes weights only and
samples nothing; the sampling options (``--steps``, ``--calibration-prompts``,
``--samples-per-timestep``) matter only when a profile option makes it
static, and are recorded with the results.
This is a benchmark, not a test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("android-int8", "android-fp32")
# Buildable on request: Core ML packages too (their size at SD scale is what ios-w4's bar is about).
BUILDABLE = TARGETS + ("ios-fp16", "ios-w8", "ios-w4", "ios-w6")
# issue 11's bars for the SD-1.5-architecture U-Net to android-int8
BARS = {"seconds": 600, "peak_rss_gib": 12}


def model_folder(name: str, root: Path, progress) -> Path:
    if name == "reference":
        from lgc.compiler.build import DEFAULT_MODEL

        return DEFAULT_MODEL
    from sd15_arch import ensure_folder

    return ensure_folder(root, progress)


def build_unet(folder: Path, target: str, steps: int, prompts: int, samples: int, out: Path, cache: Path) -> dict:
    """One cold build of the U-Net to ``target`` in this process, as ``lgc build`` runs it: the stage records."""
    from lgc.compiler.artifact_cache import ArtifactCache
    from lgc.compiler.bundle import size_bytes
    from lgc.compiler.build import BuildState, export_components, lower_component
    from lgc.compiler.model_import import load_pipeline
    from lgc.compiler.pass_manager import PassManager, resolve_pipeline
    from lgc.compiler.stages import StageClock, peak_rss_mib
    from lgc.compiler.ui import UI
    from lgc.targets.profiles import get_profile

    ui = UI()
    t0 = time.perf_counter()
    profile = get_profile(target).with_overrides(steps=steps)
    if "calibrate_observers" in profile.pipeline():
        profile = profile.with_pass_options([f"calibrate_observers.max_prompts={prompts}", "calibrate_observers.seeds=[1000]",
                                             f"calibrate_observers.unet_samples_per_timestep={samples}"])
    planned = resolve_pipeline(profile.pipeline(), profile.options())
    stages = StageClock(ui.step)
    stages.step(f"importing {folder}")
    model = load_pipeline(folder, profile.components, None)
    stages.step("exporting unet")
    # Only the U-Net is captured: the passes skip components without a graph, and
    # calibration still has the whole eager pipeline to record inputs with.
    export_components(model, ("unet",))
    comp = model.components["unet"]
    state = BuildState(profile, model, cache_dir=cache, progress_calibration=ui.counter("calibration"))
    PassManager(planned, progress=stages.step).run(state)
    # Through the artifact cache, as lgc build lowers: its key digests every weight, and the
    # artifact is copied into it. The cache is empty, so this lowers (a cold build).
    art = lower_component(comp, profile, out, ArtifactCache(cache), stages.step)
    records = stages.finish()
    return {
        "target": target, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": peak_rss_mib(),
        "unet_params": model.info["unet_params"], "file": art["file"], "artifact_bytes": size_bytes(out / art["file"]),
        "lowering_seconds": art["seconds"],
        # What a runner needs to call it with the U-Net's own inputs (open_runner's manifest entry).
        "runner_entry": {"inputs": [{"name": n} for n in comp.input_names], **({"methods": art["methods"]} if art.get("methods") else {})},
        **({"pte_bytes": (out / art["file"]).stat().st_size,
            "delegation": {k: art[k] for k in ("delegate_subgraphs", "delegated_nodes", "nondelegated_compute_ops", "nondelegated_ops")}}
           if art["file"].endswith(".pte") else {}),
        "stages": records,
    }


def child(args) -> int:
    with tempfile.TemporaryDirectory(prefix="lgc-compile-bench-") as tmp:
        result = build_unet(Path(args.child_folder), args.child, args.steps, args.calibration_prompts, args.samples_per_timestep,
                            Path(tmp), Path(tmp) / "cache")
        if args.child_keep:  # the speed benchmark times the artifact this build made
            Path(args.child_keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / result["file"]), args.child_keep)
    Path(args.child_json).write_text(json.dumps(result))
    return 0


def run_child(folder: Path, target: str, args, keep: Path | None = None) -> dict:
    """``target`` built by a fresh interpreter; its stage records (or the failure, with its exit code).

    ``keep``: where to move the built ``.pte`` (otherwise it is deleted with the build's folder).
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", target, "--child-folder", str(folder), "--child-json", str(out),
           "--steps", str(args.steps), "--calibration-prompts", str(args.calibration_prompts),
           "--samples-per-timestep", str(args.samples_per_timestep)] + (["--child-keep", str(keep)] if keep else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd)
    try:
        if proc.returncode != 0:
            # -9: the kernel's OOM killer (the build needed more memory than the machine has).
            return {"target": target, "failed": True, "returncode": proc.returncode, "seconds": round(time.perf_counter() - t, 1)}
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    for r in results["builds"]:
        if r.get("failed"):
            con.print(f"[red]{r['target']}: the build process exited with {r['returncode']} after {r['seconds']} s[/red]")
            continue
        d = r.get("delegation")
        delegation = f", {d['delegate_subgraphs']} delegate(s), {d['nondelegated_compute_ops']} compute ops outside" if d else ""
        t = Table(title=f"{results['model']} U-Net -> {r['target']}: {r['seconds']} s, peak RSS {r['peak_rss_mib'] / 1024:.1f} GiB, "
                        f"{r['artifact_bytes'] / 2**20:.0f} MiB {r['file']}{delegation}", title_justify="left")
        for col in ("stage", "seconds", "peak RSS GiB"):
            t.add_column(col, justify="left" if col == "stage" else "right")
        for s in r["stages"]:
            t.add_row(s["stage"][:90], f"{s['seconds']:.1f}", f"{s['peak_rss_mib'] / 1024:.2f}")
        t.add_row("  of which lowering: " + ", ".join(f"{k} {v:.1f}" for k, v in r["lowering_seconds"].items()), "", "")
        con.print(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd15-arch", choices=["sd15-arch", "reference"], help="which U-Net to build")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(BUILDABLE))
    ap.add_argument("--models-dir", type=Path, default=REPO / "build" / "bench-models", help="where generated model folders are kept")
    ap.add_argument("--steps", type=int, default=4, help="sampler steps (calibration visits each)")
    ap.add_argument("--calibration-prompts", type=int, default=2, help="prompts the calibration pipeline runs (one seed each)")
    ap.add_argument("--samples-per-timestep", type=int, default=2, help="U-Net calibration samples per visited timestep")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-folder", help=argparse.SUPPRESS)
    ap.add_argument("--child-json", help=argparse.SUPPRESS)
    ap.add_argument("--child-keep", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        return child(args)
    folder = model_folder(args.model, args.models_dir, lambda m: print(m, file=sys.stderr))
    results = {"model": args.model, "folder": str(folder),
               "calibration": {"steps": args.steps, "prompts": args.calibration_prompts, "seeds": 1,
                               "unet_samples_per_timestep": args.samples_per_timestep},
               "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
               "bars": BARS, "builds": []}
    for target in args.targets:
        print(f"building {args.model} U-Net -> {target} in a fresh process ...", file=sys.stderr)
        results["builds"].append(run_child(folder, target, args))
        if args.json:  # after every build: a long run that is stopped keeps what it measured
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0 if not any(r.get("failed") for r in results["builds"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
