"""Tune the reference model's TVM kernels and write the records lgc ships for it (``tvm_tuning/``).

    python -m lgc.compiler.reference.tune_tvm --trials 16       # about an hour on 2 cores

Runs ``lgc build --target tvm-host --tune-trials N`` into a scratch folder, then keeps
the best record of each kernel (MetaSchedule's database keeps every trial) and
writes them here, so that a fresh clone's TVM builds of the reference model are
tuned without tuning. Run it again when a pass changes the reference model's
graphs: ``tests/targets/test_tvm_tuning.py`` fails when a kernel has no record.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from lgc.targets.tvm.tuning import DATABASE_FILES, SHIPPED_SUFFIX


def best_records(src_dir: Path, dst_dir: Path) -> int:
    """Copy the fastest valid record of every kernel from the database in ``src_dir`` to a new one in ``dst_dir`` (gzipped)."""
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


def main(argv=None) -> int:
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI
    from lgc.targets.tvm.tuning import DATABASE_DIR, SHIPPED_DATABASE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per kernel")
    ap.add_argument("--out", type=Path, default=None, help="scratch build folder (default: a temporary one)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="lgc-tune-reference-"))
    # Without the shipped records: every kernel is tuned afresh.
    shipped_aside = SHIPPED_DATABASE.with_name(SHIPPED_DATABASE.name + ".old")
    if SHIPPED_DATABASE.exists():
        SHIPPED_DATABASE.rename(shipped_aside)
    try:
        build(None, "tvm-host", out, UI(), emit_options={"tuning_trials": args.trials})
        n = best_records(out / ".cache" / DATABASE_DIR, SHIPPED_DATABASE)
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
