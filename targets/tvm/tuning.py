"""MetaSchedule tuning of a component's kernels, kept in a database that later builds reuse.

Untuned, TVM compiles each fused kernel as plain loops: no threads, no
vectors (the reference U-Net ran 18x slower than ONNX Runtime). Tuning
searches each kernel's schedule by building and timing candidates on this
machine, about 13 s a kernel at 16 trials here, so it is paid once per kernel: the
best schedule found is kept in a JSON database keyed by the kernel's
structure, and a kernel that already has a record is never tuned again. A
build whose kernels all have records does no tuning at all; with a trial
budget of 0 (the default) a build only applies the records there are.

Records are target-independent schedule decisions (tiling, parallel loops,
vector lengths), so the arm64 module gets the schedules tuned on this
machine: the same decisions as its tvm-host twin, which is what the harness
measures. Tuning for the phone's own CPU would need MetaSchedule's RPC runner
on a device.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

# Under the build cache; shared by every TVM target and component.
DATABASE_DIR = "tvm-tuning"
# Records shipped for lgc's reference model, tuned on the machine README.md names; gzipped
# (each kernel's TIR is ~70 KB of JSON: 9 MB for the reference model, 0.7 MB compressed).
SHIPPED_DATABASE = Path(__file__).resolve().parents[2] / "compiler" / "reference" / "tvm_tuning"
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
SHIPPED_SUFFIX = ".gz"
# Timeouts per candidate. MetaSchedule's 30 s build timeout counts the worker's start (importing
# tvm, which imports torch); on a loaded 2-core machine whole batches timed out and were lost.
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
# Build batches a worker pool serves before it is replaced (MetaSchedule replaces it every batch
# because of a memory leak in long-lived workers; see _reused_pool_builder for why not every batch).
POOL_BATCHES = 25


@functools.cache
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (LLVM 22 in TVM rejects ``-mcpu=native``)."""
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def resolve_target(target_json: dict) -> dict:
    """The profile's target with ``"mcpu": "host"`` replaced by this machine's CPU."""
    if target_json.get("mcpu") == "host":
        return {**target_json, "mcpu": host_cpu()}
    return dict(target_json)


def _files_digest(folder: Path | None, suffix: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in DATABASE_FILES:
        f = Path(folder) / (name + suffix) if folder else None
        h.update(f.read_bytes() if f and f.is_file() else b"-")
    return h.hexdigest()


# The shipped records do not change while lgc runs; the build cache's own records do (tuning adds them).
_shipped_digest = functools.cache(lambda: _files_digest(SHIPPED_DATABASE, SHIPPED_SUFFIX))


def databases_digest(db_dir: Path | None) -> str:
    """A digest of every record the build can apply: part of the artifact's cache key."""
    import hashlib

    return hashlib.sha256((_shipped_digest() + _files_digest(db_dir, "")).encode()).hexdigest()


def unpack_shipped(dest: Path) -> bool:
    """Write the shipped records, decompressed, as a JSON database in ``dest``; False if none are shipped."""
    import gzip

    if not (SHIPPED_DATABASE / (DATABASE_FILES[1] + SHIPPED_SUFFIX)).is_file():
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for n in DATABASE_FILES:
        (dest / n).write_bytes(gzip.decompress((SHIPPED_DATABASE / (n + SHIPPED_SUFFIX)).read_bytes()))
    return True


def _shipped_database():
    """The shipped records as a database (read-only: nothing is committed to it), or None."""
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="lgc-shipped-tuning-") as tmp:
        if not unpack_shipped(Path(tmp)):
            return None
        return ms.database.JSONDatabase(*(str(Path(tmp) / n) for n in DATABASE_FILES), allow_missing=False)  # read now


def open_databases(db_dir: Path | None):
    """(the database tuning writes to, the union of it and the shipped records that a build applies)."""
    from tvm.s_tir import meta_schedule as ms

    if db_dir:
        Path(db_dir).mkdir(parents=True, exist_ok=True)
    own = ms.database.JSONDatabase(work_dir=str(db_dir)) if db_dir else ms.database.MemoryDatabase()
    shipped = _shipped_database()
    return own, (ms.database.UnionDatabase(own, shipped) if shipped is not None else own)


def prepare(mod, target):
    """Relax -> fused TIR kernels, as the build and the tuner both see them (so their records match)."""
    import tvm
    from tvm import relax

    from lgc.targets.tvm.fast_math import fast_math
    from lgc.targets.tvm.fused_attention import fused_attention
    from lgc.targets.tvm.threads import use_physical_cores

    # Before constant folding runs the first kernel (and starts TVM's thread pool); tuning's runner
    # processes, started later, inherit the count.
    use_physical_cores()

    with target:
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
                                         fused_attention(), fast_math(), relax.get_pipeline("zero")])(mod)


def _progress_callback(total: int, progress):
    """A MetaSchedule measure callback that reports trials done (MetaSchedule itself only logs)."""
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self):
            self.done = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.done += len(measure_candidates)
            progress(min(self.done, total), total, f"kernel {task_id + 1}")

    return Progress()


def _reused_pool_builder(max_workers: int):
    """MetaSchedule's LocalBuilder, except that its worker processes serve many batches.

    A worker's first build imports tvm.s_tir.tensor_intrin, which parses a few hundred TVMScript
    functions, each calling inspect.stack(); with torch imported (tvm_ffi imports it) that took 30 s
    here. LocalBuilder starts new workers for every batch, so every kernel paid it: 30 s of the
    45 s a kernel took at 16 trials. (The import itself is now cheap too: tensor_intrinsics.py.)
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    from lgc.targets.tvm.tensor_intrinsics import import_tensor_intrinsics

    @derived_object
    class ReusedPoolBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool, self.batches = None, 0

        def build(self, build_inputs):
            if self.pool is None or self.batches >= POOL_BATCHES:
                if self.pool is not None:
                    self.pool.shutdown()
                # Each worker imports the tensor intrinsics when it starts, cheaply (tensor_intrinsics.py);
                # its first build would otherwise import them through the slow path.
                self.pool, self.batches = PopenPoolExecutor(max_workers=max_workers, timeout=BUILD_TIMEOUT_S,
                                                            initializer=import_tensor_intrinsics), 0
            self.batches += 1
            results = []
            for r in self.pool.map_with_error_catching(
                    lambda x: _worker_func(*x),
                    [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {BUILD_TIMEOUT_S} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {r.value}"))
            return results

        def close(self):
            """Stop the last pool's workers (each holds tvm and torch in memory)."""
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    return ReusedPoolBuilder()


def is_hand_scheduled(func) -> bool:
    """Whether a kernel was scheduled by lgc itself (``fused_attention``): tuning leaves it alone."""
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def extract_tasks(mod, target) -> tuple[list, int]:
    """(MetaSchedule's tasks of ``mod`` (prepared), one per kernel, except lgc's hand-scheduled kernels; how many those are).

    MetaSchedule means to skip kernels marked scheduled, but in TVM 0.27 it looks for the mark on the
    task's module, where extraction never puts it, instead of on the kernel (relax_integration.
    extracted_tasks_to_tune_contexts), so it would tune them like any other.
    """
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    tunable = [t for t in tasks if not is_hand_scheduled(t.dispatched[0]["main"])]
    return tunable, len(tasks) - len(tunable)


def measurable(task) -> bool:
    """Whether MetaSchedule can time this kernel: its runner feeds random inputs, and random indices
    into a gather (the text encoder's token lookup, ``take``) read out of bounds and kill the runner.
    Such kernels stay untuned; they are memory moves, which tuning would barely change."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    # The argument descriptions the runner makes its random inputs from.
    args = ArgInfo.from_prim_func(task.dispatched[0]["main"])
    return not any(str(getattr(a, "dtype", "")).startswith(("int", "uint")) for a in args)


def tune(mod, target_json: dict, own_db, applied_db, trials_per_task: int, work_dir: Path, progress=None,
         retune: frozenset[str] = frozenset()) -> dict:
    """Tune the kernels of ``mod`` (prepared) that no database has a record for; what was done.

    ``retune``: kernels (task names) to tune again although they have records: the search starts from
    their best records (MetaSchedule seeds its population from the database), so trials add to them.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from lgc.targets.tvm.tensor_intrinsics import import_tensor_intrinsics
    from lgc.targets.tvm.threads import use_physical_cores

    # Measured on this machine with the threads its kernels run on (threads.py), which MetaSchedule
    # sizes parallel loops for (num-cores); records apply to any target.
    cores = use_physical_cores()
    tune_target = tvm.target.Target({**resolve_target(target_json), "num-cores": cores})
    if "mtriple" in target_json:  # a cross target: candidates are built and timed for this machine instead
        tune_target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": cores})
    tasks, hand_scheduled = extract_tasks(mod, tune_target)
    missing = {t.task_name for t in tasks if applied_db.query_tuning_record(t.dispatched[0], tune_target, t.task_name) is None}
    unmeasurable = {t.task_name for t in tasks if (t.task_name in missing or t.task_name in retune) and not measurable(t)}
    # "kernels": those tuning is for; lgc's own kernels are counted apart (all count in "kernels_scheduled").
    report = {"kernels": len(tasks), "kernels_hand_scheduled": hand_scheduled,
              "kernels_with_records": len(tasks) - len(missing), "kernels_tuned": 0,
              "kernels_not_measurable": sorted(unmeasurable & missing), "trials": 0, "seconds": 0.0}
    missing = [t for t in tasks if (t.task_name in missing or t.task_name in retune) and t.task_name not in unmeasurable]
    if not missing or trials_per_task <= 0:
        return report
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # progress instead of its INFO lines
    work_dir.mkdir(parents=True, exist_ok=True)
    # The evolutionary search breeds a population the cost model ranks, to pick each batch. At
    # MetaSchedule's 512 it took 90 s per normalisation kernel here, 6x the building and timing of
    # 16 candidates; 8 per trial (128 at least) is still 8x the candidates measured.
    import_tensor_intrinsics()  # the tune contexts import them; see tensor_intrinsics.py
    strategy = ms.search_strategy.EvolutionarySearch(population_size=min(512, max(128, 8 * trials_per_task)))
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(missing, work_dir=str(work_dir),
                                                                              strategy=strategy, seed=0)
    total = trials_per_task * len(contexts)
    callbacks = ms.MeasureCallback.create("default") + ([_progress_callback(total, progress)] if progress else [])
    t0 = time.perf_counter()
    # Round robin, one batch per kernel: each kernel's records are saved as soon as its batch is timed.
    # The default (gradient) scheduler saves nothing until every kernel has had its first batch, so an
    # interrupted tuning of the U-Net lost everything (and the progress callback was not called).
    builder = _reused_pool_builder(os.cpu_count() or 1)
    try:
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=total,
                      max_trials_per_task=trials_per_task, num_trials_per_iter=min(trials_per_task, 64),
                      builder=builder, runner=ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S),
                      database=own_db, measure_callbacks=callbacks, task_scheduler="round-robin")
    finally:
        builder.close()
    if progress:
        progress(total, total, "")
    report.update(kernels_tuned=len(contexts), trials=total, seconds=round(time.perf_counter() - t0, 1))
    return report


def apply(mod, target, applied_db):
    """(``mod`` (prepared) with every kernel that has a record scheduled by it, how many); the rest stay untuned."""
    from tvm import relax, tirx

    with target, applied_db:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    scheduled = sum(1 for f in mod.functions.values() if isinstance(f, tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False))
    return mod, scheduled
