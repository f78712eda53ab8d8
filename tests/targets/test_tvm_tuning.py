"""TVM tuning: MetaSchedule tunes the kernels without a record, keeps them in the cache's database, and a rebuild reuses them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")

TRIALS = 4  # per kernel: the mechanism, not the search, is under test here


class ConvBlock(torch.nn.Module):
    """Two kernels once fused: conv+bias+relu, and a 1x1 conv. Small enough to tune in a minute."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.proj = torch.nn.Conv2d(32, 16, 1)

    def forward(self, x):
        return self.proj(torch.relu(self.conv(x)))


def _component():
    from lgc.compiler.model_import import Component

    module, x = ConvBlock().eval(), torch.randn(1, 16, 32, 32)
    gm = torch.export.export(module, (x,)).module()
    return Component("unet", module, (x,), ["x"], ["y"], "ConvBlock", graph=gm)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The component lowered with tuning (cold database), again through the warm database, and without records."""
    from lgc.compiler.artifact_cache import ArtifactCache
    from lgc.compiler.build import lower_component
    from lgc.targets.profiles import get_profile

    root = tmp_path_factory.mktemp("tvm-tuning")
    comp = _component()
    cache = ArtifactCache(root / "cache")
    seen = []
    out = {}
    for tag, trials in (("tuned", TRIALS), ("warm", TRIALS), ("records off", 0)):
        dest = root / tag
        dest.mkdir()
        profile = get_profile("tvm-host").with_emit_options(tuning_trials=trials, tuning_records=tag != "records off")
        if tag == "warm":  # a fresh cache for the artifact, the same tuning records: must not tune again
            cache = ArtifactCache(root / "cache")
            (root / "cache" / "artifacts").rename(root / "artifacts-before")
        art = lower_component(comp, profile, dest, cache, seen.append, progress=lambda done, total, what="": None)
        out[tag] = (dest / art["file"], art)
    return comp, out, root / "cache"


def test_no_trial_budget_tunes_nothing(tmp_path):
    """The default (--tune-trials 0) on a cold database: every kernel is counted, none tuned."""
    import tvm

    from lgc.targets.tvm import tuning
    from lgc.targets.tvm.emit import relax_module

    target_json = {"kind": "llvm", "mcpu": "host"}
    mod = tuning.prepare(relax_module(_component()), tvm.target.Target(tuning.resolve_target(target_json)))
    own, applied = tuning.open_databases(tmp_path / "db")
    t = tuning.tune(mod, target_json, own, applied, 0, tmp_path / "logs")
    assert t["kernels"] >= 2 and t["kernels_with_records"] == t["kernels_tuned"] == t["trials"] == 0
    assert not (tmp_path / "logs").exists()


def test_tuning_records_every_kernel_in_the_cache_database(tuned):
    from lgc.targets.tvm.tuning import DATABASE_DIR

    _, out, cache_dir = tuned
    t = out["tuned"][1]["tuning"]
    assert t["kernels_tuned"] == t["kernels"] - t["kernels_with_records"] > 0 and t["kernels_not_measurable"] == []
    assert t["trials"] == TRIALS * t["kernels_tuned"] and t["seconds"] > 0
    assert (cache_dir / DATABASE_DIR / "database_tuning_record.json").stat().st_size > 0


def test_warm_database_does_no_new_tuning(tuned):
    _, out, _ = tuned
    t = out["warm"][1]["tuning"]
    assert t["kernels_with_records"] == t["kernels"] and t["kernels_tuned"] == 0 and t["trials"] == 0
    assert out["warm"][1]["cached"] is False  # the artifact itself was lowered again, from the records


def test_records_are_applied_and_compute_the_same(tuned):
    from lgc.runtime_harness.runners import TVMRunner

    comp, out, _ = tuned
    x = comp.example_inputs[0]
    with torch.no_grad():
        ref = comp.module(x)
    for tag in ("tuned", "warm"):
        t = out[tag][1]["tuning"]
        # Every kernel with a record is compiled with its tuned schedule (the speed is bench/speed.py's job).
        assert t["kernels_scheduled"] == t["kernels_with_records"] + t["kernels_tuned"] == t["kernels"], (tag, t)
        assert torch.allclose(TVMRunner(out[tag][0])(x), ref, atol=1e-4, rtol=1e-4), tag


def test_without_records_every_kernel_is_untuned(tuned):
    from lgc.runtime_harness.runners import TVMRunner

    comp, out, _ = tuned
    t = out["records off"][1]["tuning"]
    assert t["kernels_scheduled"] == 0 and t["trials"] == 0
    x = comp.example_inputs[0]
    with torch.no_grad():
        assert torch.allclose(TVMRunner(out["records off"][0])(x), comp.module(x), atol=1e-4, rtol=1e-4)


def test_shipped_records_are_the_best_of_each_kernel_and_apply(tuned, tmp_path, monkeypatch):
    """What compiler/reference/tune_tvm.py ships: one record per kernel, enough for a build with an empty cache."""
    import gzip

    from lgc.compiler.artifact_cache import ArtifactCache
    from lgc.compiler.build import lower_component
    from lgc.compiler.reference.tune_tvm import best_records
    from lgc.targets.profiles import get_profile
    from lgc.targets.tvm import tuning

    comp, out, cache_dir = tuned
    kernels = out["tuned"][1]["tuning"]["kernels"]
    assert best_records(cache_dir / tuning.DATABASE_DIR, tmp_path / "shipped") == kernels
    records = gzip.decompress((tmp_path / "shipped" / "database_tuning_record.json.gz").read_bytes()).decode().splitlines()
    assert len(records) == kernels  # every trial was kept in the cache; only the best is shipped
    monkeypatch.setattr(tuning, "SHIPPED_DATABASE", tmp_path / "shipped")
    (tmp_path / "dest").mkdir()
    art = lower_component(comp, get_profile("tvm-host"), tmp_path / "dest", ArtifactCache(tmp_path / "empty-cache"), lambda m: None)
    assert art["tuning"]["kernels_with_records"] == art["tuning"]["kernels_scheduled"] == kernels


def test_tune_trials_is_refused_for_other_targets():
    from lgc.compiler.errors import UsageError
    from lgc.targets.profiles import get_profile

    with pytest.raises(UsageError, match="--tune-trials does not apply to android-int8"):
        get_profile("android-int8").with_emit_options(tuning_trials=8)
    with pytest.raises(UsageError, match="--tune-trials must be 0 or more"):
        get_profile("tvm-host").with_emit_options(tuning_trials=-1)


def test_tvm_ir_serialises_with_the_pinned_tvm_ffi():
    """apache-tvm-ffi 0.1.15+ segfaults serialising any IR node with apache-tvm 0.27; MetaSchedule serialises every kernel.

    In a child process: a segfault here must fail this test, not end the test run.
    """
    import subprocess
    import sys

    code = "import tvm; tvm.ir.load_json(tvm.ir.save_json(tvm.tirx.IntImm('int32', 3)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"tvm.ir.save_json crashed (rc {run.returncode}); is apache-tvm-ffi the pinned 0.1.14.post1?"


def test_every_reference_kernel_has_a_shipped_record():
    """compiler/reference/tvm_tuning covers the reference model as lgc's passes leave it.

    When this fails, a change made new kernels: run `python -m lgc.compiler.reference.tune_tvm --incremental`
    and commit its records.
    """
    import tvm

    from lgc.compiler.reference.tune_tvm import reference_tasks
    from lgc.targets.profiles import get_profile
    from lgc.targets.tvm import tuning

    target = tvm.target.Target(tuning.resolve_target(get_profile("tvm-host").emit_options["target"]))
    _, shipped = tuning.open_databases(None)
    for name, tasks in reference_tasks().items():
        missing = [t.task_name for t in tasks if tuning.measurable(t)
                   and shipped.query_tuning_record(t.dispatched[0], target, t.task_name) is None]
        assert len(tasks) > 10 and not missing, f"{name}: no shipped record for {missing}"


def test_gather_kernels_are_not_measured():
    """MetaSchedule times kernels on random inputs: random token ids index out of bounds and kill its runner."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from lgc.compiler.model_import import Component
    from lgc.targets.tvm import tuning
    from lgc.targets.tvm.emit import relax_module

    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.proj = torch.nn.Embedding(100, 16), torch.nn.Linear(16, 16)

        def forward(self, ids):
            return self.proj(self.table(ids))

    ids = torch.arange(8).reshape(1, 8)
    module = Lookup().eval()
    comp = Component("text_encoder", module, (ids,), ["ids"], ["y"], "Lookup", graph=torch.export.export(module, (ids,)).module())
    target = tvm.target.Target(tuning.resolve_target({"kind": "llvm", "mcpu": "host"}))
    tasks = ms.relax_integration.extract_tasks(tuning.prepare(relax_module(comp), target), target)
    verdicts = {t.task_name: tuning.measurable(t) for t in tasks}
    assert any(n.startswith("take") and not ok for n, ok in verdicts.items()), verdicts
    assert any("matmul" in n and ok for n, ok in verdicts.items()), verdicts
