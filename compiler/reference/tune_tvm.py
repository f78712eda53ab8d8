"""Tune the reference model's TVM kernels and write the records lgc ships for it (``tvm_tuning/``).

    python -m lgc.compiler.reference.tune_tvm --trials 16       # about an hour on 2 cores

Runs ``lgc build --target tvm-host --tune-trials N`` into a scratch folder, then keeps
the best record of each kernel (MetaSchedule's database keeps every trial) and
writes them here, so that a fresh clone's TVM builds of the reference model are
tuned without tuning. Run it again when a pass changes the reference model's
graphs: ``tests/targets/test_tvm_tuning.py`` fails when a kernel has no record.

    python -m lgc.compiler.reference.tune_tvm --trials 16 --incremental --deepen 12 --deep-trials 64

``--incremental`` keeps the shipped records, tunes only the kernels that have
none, and drops the records of kernels the model no longer has. ``--deepen K``
then times every kernel of the built bundle and gives each component's K slowest
kernels ``--deep-trials`` more candidates, where the time goes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from lgc.targets.tvm.tuning import DATABASE_FILES, SHIPPED_SUFFIX

PROFILE = "tvm-host"


def _target():
    import tvm

    from lgc.targets.profiles import get_profile
    from lgc.targets.tvm import tuning

    return tvm.target.Target(tuning.resolve_target(get_profile(PROFILE).emit_options["target"]))


def reference_modules() -> dict:
    """{component: its Relax module, prepared for tuning}: the reference model after lgc's passes."""
    from lgc.compiler.build import DEFAULT_MODEL, BuildState, export_components
    from lgc.compiler.model_import import load_pipeline
    from lgc.compiler.pass_manager import PassManager, resolve_pipeline
    from lgc.targets.profiles import get_profile
    from lgc.targets.tvm import tuning
    from lgc.targets.tvm.emit import relax_module

    profile = get_profile(PROFILE)
    model = load_pipeline(DEFAULT_MODEL, profile.components, None)
    export_components(model)
    with tempfile.TemporaryDirectory() as cache:
        PassManager(resolve_pipeline(profile.pipeline(), profile.options())).run(BuildState(profile, model, cache_dir=Path(cache)))
    return {name: tuning.prepare(relax_module(comp), _target()) for name, comp in model.components.items()}


def tasks_of(mod) -> list:
    """MetaSchedule's tasks (one per tunable kernel) of a prepared module."""
    from lgc.targets.tvm import tuning

    return tuning.extract_tasks(mod, _target())[0]


def reference_tasks() -> dict:
    """{component: its MetaSchedule tasks}: the reference model's kernels as a tvm-host build makes them."""
    return {name: tasks_of(mod) for name, mod in reference_modules().items()}


def best_records(src_dir: Path, dst_dir: Path, keep: set | None = None) -> int:
    """Copy the fastest valid record of every kernel from the database in ``src_dir`` to a new one in ``dst_dir`` (gzipped).

    ``keep``: the structural hashes of the kernels to keep records of (default: all).
    """
    import gzip

    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    src = ms.database.JSONDatabase(work_dir=str(src_dir))
    best = {}
    for rec in src.get_all_tuning_records():
        secs = [float(s) for s in rec.run_secs or []]
        if not secs or max(secs) >= 1e9:  # MetaSchedule records failed builds and runs as 1e10 s
            continue
        key = tvm_ffi.structural_hash(rec.workload.mod)
        if keep is not None and key not in keep:
            continue
        if key not in best or sum(secs) / len(secs) < best[key][0]:
            best[key] = (sum(secs) / len(secs), rec)
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    dst = ms.database.JSONDatabase(work_dir=str(dst_dir))
    for _, (_, rec) in sorted(best.items()):  # in a fixed order: the files are committed
        workload = dst.commit_workload(rec.workload.mod)
        dst.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, rec.run_secs, rec.target, rec.args_info))
    for name in DATABASE_FILES:
        f = dst_dir / name
        (dst_dir / (name + SHIPPED_SUFFIX)).write_bytes(gzip.compress(f.read_bytes(), mtime=0))
        f.unlink()
    return len(best)


def deepen(bundle: Path, db_dir: Path, modules: dict, tasks: dict, kernels: int, trials: int, ui,
           components=("unet", "vae_decoder")) -> dict:
    """Tune each component's ``kernels`` slowest kernels (timed in ``bundle``) ``trials`` more times; {component: names}.

    ``modules``, ``tasks``: reference_modules() and its tasks.
    """
    from lgc.compiler import manifest as manifest_mod
    from lgc.runtime_harness.runners import TVMRunner
    from lgc.targets.profiles import get_profile
    from lgc.targets.tvm import tuning

    manifest = manifest_mod.load(bundle)["components"]
    own, applied = tuning.open_databases(db_dir)
    chosen = {}
    for name, mod in modules.items():
        if name not in components:
            continue
        # Timing only: random latents, token id 0 (the text encoder's lookup must stay in bounds).
        example = [torch.randn(i["shape"]) if i["dtype"].startswith("float") else torch.zeros(i["shape"], dtype=torch.int64)
                   for i in manifest[name]["inputs"]]
        names = {t.task_name for t in tasks[name]}
        chosen[name] = [k for k in TVMRunner(bundle / f"{name}.tvm").kernel_ms(*example) if k in names][:kernels]
        ui.step(f"tuning {name}: {trials} more trials for each of {', '.join(chosen[name])}")
        tuning.tune(mod, get_profile(PROFILE).emit_options["target"], own, applied, trials, db_dir / "logs",
                    ui.counter(f"tuning {name}"), retune=frozenset(chosen[name]))
    return chosen


def main(argv=None) -> int:
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI
    from lgc.targets.tvm.tuning import DATABASE_DIR, SHIPPED_DATABASE, unpack_shipped

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per kernel")
    ap.add_argument("--out", type=Path, default=None, help="scratch build folder (default: a temporary one)")
    ap.add_argument("--incremental", action="store_true",
                    help="keep the shipped records and tune only kernels without one (default: tune every kernel afresh)")
    ap.add_argument("--deepen", type=int, default=0, metavar="K", help="then tune each component's K slowest kernels more")
    ap.add_argument("--deep-trials", type=int, default=64, help="trials per kernel for --deepen")
    ap.add_argument("--deep-components", default="unet,vae_decoder", help="components --deepen tunes (comma-separated)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="lgc-tune-reference-"))
    scratch_db = out / ".cache" / DATABASE_DIR
    # The reference model's kernels after lgc's passes, computed once for both options that need them.
    modules = reference_modules() if args.incremental or args.deepen else {}
    tasks = {name: tasks_of(mod) for name, mod in modules.items()}
    keep = None
    if args.incremental:  # the shipped records become the scratch database's: only kernels without one are tuned
        import tvm_ffi

        unpack_shipped(scratch_db)
        keep = {tvm_ffi.structural_hash(t.dispatched[0]) for component in tasks.values() for t in component}
    # Without the shipped records applied by the build itself: they are in the scratch database or retuned.
    shipped_aside = SHIPPED_DATABASE.with_name(SHIPPED_DATABASE.name + ".old")
    if SHIPPED_DATABASE.exists():
        SHIPPED_DATABASE.rename(shipped_aside)
    try:
        ui = UI()
        build(None, PROFILE, out, ui, emit_options={"tuning_trials": args.trials})
        if args.deepen:
            deepen(out / PROFILE, scratch_db, modules, tasks, args.deepen, args.deep_trials, ui,
                   tuple(args.deep_components.split(",")))
        n = best_records(scratch_db, SHIPPED_DATABASE, keep)
    except BaseException:
        if shipped_aside.exists():
            shutil.rmtree(SHIPPED_DATABASE, ignore_errors=True)
            shipped_aside.rename(SHIPPED_DATABASE)
        raise
    shutil.rmtree(shipped_aside, ignore_errors=True)
    print(f"{n} kernel records written to {SHIPPED_DATABASE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
