"""Emit one component as a TVM Relax module: the component's graph imported into Relax, compiled for the profile's target.

The weights are bound into the module as constants, so each component is
one self-contained library: a shared object for the host, an archive of
objects for arm64 Android (linked into the app with the NDK; no NDK is
needed to produce it). The Relax VM entry point is ``main``, taking the
component's inputs in the manifest's order.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

# Library format per target OS: what export_library writes without a cross toolchain.
FORMATS = {"host": "so", "android": "tar"}


def relax_module(component):
    """The component's post-pass graph as a Relax IRModule (weights bound as constants)."""
    from tvm.relax.frontend.torch import from_exported_program

    # Core ATen: TVM's importer translates the decomposed forms, not every composite op.
    ep = torch.export.export(component.graph, component.example_inputs, strict=False).run_decompositions()
    return from_exported_program(ep, keep_params_as_input=False)


def compile_module(mod, target_json: dict, trials_per_task: int = 0, db_dir: Path | None = None, progress=None,
                   use_records: bool = True):
    """(the Relax VM executable, what tuning did): kernels tuned where the budget allows, records applied."""
    import tvm
    from tvm import relax

    from lgc.targets.tvm import tuning

    target = tvm.target.Target(tuning.resolve_target(target_json))
    mod = tuning.prepare(mod, target)
    if not use_records:  # the untuned fallback (and the benchmark's baseline): plain loops
        return relax.build(mod, target=target), {"kernels_scheduled": 0, "trials": 0, "seconds": 0.0, "records": "not used"}
    own_db, applied_db = tuning.open_databases(db_dir)
    # MetaSchedule's logs: kept beside the build cache's records, else thrown away with the build.
    with tempfile.TemporaryDirectory(prefix="lgc-tvm-tuning-") as tmp:
        work_dir = Path(db_dir) / "logs" if db_dir else Path(tmp)
        report = tuning.tune(mod, target_json, own_db, applied_db, trials_per_task, work_dir, progress)
    mod, report["kernels_scheduled"] = tuning.apply(mod, target, applied_db)
    return relax.build(mod, target=target), report


def library_name(options: dict) -> str:
    return f"module.{FORMATS[options['os']]}"


def emit(component, out_dir: Path, profile, cache_dir: Path | None = None, progress=None) -> dict:
    from lgc.targets.tvm.tuning import DATABASE_DIR, resolve_target

    options = profile.emit_options
    t0 = time.perf_counter()
    mod = relax_module(component)
    t_import = time.perf_counter() - t0
    db_dir = Path(cache_dir) / DATABASE_DIR if cache_dir else None
    # Every TVM profile sets both options (targets/profiles.py), so no defaults are repeated here.
    executable, tuned = compile_module(mod, options["target"], options["tuning_trials"], db_dir, progress,
                                       use_records=options["tuning_records"])
    t_compile = time.perf_counter() - t0 - t_import - tuned["seconds"]
    folder = Path(out_dir) / f"{component.name}.tvm"
    folder.mkdir()
    executable.export_library(str(folder / library_name(options)))
    t_export = time.perf_counter() - t0 - t_import - tuned["seconds"] - t_compile
    return {
        "file": folder.name,
        "format": "tvm-relax-vm",
        "backend": f"tvm-{options['os']}",
        "library": library_name(options),
        "target": resolve_target(options["target"]),
        "tuning": tuned,
        "seconds": {"import": round(t_import, 2), "tune": tuned["seconds"], "compile": round(t_compile, 2),
                    "export": round(t_export, 2)},
    }
