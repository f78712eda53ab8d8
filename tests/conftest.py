"""Session fixtures: the reference model, tiny architecture variants, and bundles built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One compute thread per xdist worker (set before torch is imported): with the default two
    # OpenMP threads each, two workers on two cores spin-wait against each other, and the
    # suite took more CPU time in parallel (138 min) than serially (74 min).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TVM_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent

# Session fixtures that take minutes to build. Under pytest-xdist every worker builds its own
# copy of a session fixture it needs, so all tests that need one of these run on one worker.
_SHARED_BUILDS = ("bundles", "ios_bundles")


# Modules whose tests each run a build of their own and share nothing worth keeping on one worker.
_ONE_GROUP_PER_TEST = ("tests.compiler.test_architecture_matrix",)

# The slowest groups, slowest first: seconds each took in one run on the 2-core CI machine
# (`--durations=0`, summed per group), so that a greedy scheduler balances the two workers.
# Started last, one of these ran alone for minutes at the end while the other worker sat idle.
_SLOWEST_FIRST = (
    "tests.compiler.test_reproducible",  # 527
    "bundles",  # 499
    "tests.compiler.test_check",  # 362
    "ios_bundles",  # 335
    "tests.passes.quantization.test_search_mixed_precision",  # 192
    "tests.targets.test_coreml",  # 172
    "tests.targets.test_tvm",  # 144
    "tests.runtime_harness.coreml.test_mil_ops",  # 116
    "tests.targets.test_tvm_tuning",  # 116
    "tests.compiler.test_artifact_cache",  # 75
    "tests.targets.test_tvm_tensor_intrinsics",  # 70
    "tests.compiler.test_cli_errors",  # 67
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    """Group tests for ``--dist loadgroup``: by the expensive session build they share, else by module.

    Grouping by module keeps module-scoped fixtures (a TVM tuning run, an arm64 build) built once.
    The slowest groups are moved to the front (a stable sort: each module keeps its order), and
    the scheduler below hands groups out in that order. Without xdist the marks are inert and
    only the order changes.
    """
    groups = {}
    for item in items:
        shared = next((name for name in _SHARED_BUILDS if name in item.fixturenames), None)
        # Modules of independent builds (one per test) are split: each test is a group of its own.
        own = item.nodeid if item.module.__name__ in _ONE_GROUP_PER_TEST else None
        groups[item] = shared or own or item.module.__name__
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    rank = {g: i for i, g in enumerate(_SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item], len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``, but groups go out in collection order (slowest first), one at a time.

    xdist's own loadgroup scheduler defeats that order twice: it re-sorts groups by how many
    tests they hold (so the reference-bundle group, with the most tests, went first whatever
    its cost), and it hands a worker its next group while two tests of the current one are
    still to run (so a two-test group such as the reproducibility builds came with the next
    slow group attached). Here a worker gets its next group when it reaches the last test of
    its current one: greedy longest-first scheduling.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SlowestGroupsFirst(LoadGroupScheduling):
        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # A worker runs a test once it knows the next one (for fixture teardown), so one pending
            # test means it is waiting for more work: only then is it given another group.
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    config.option.loadscopereorder = False
    return SlowestGroupsFirst(config, log)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REPO / "compiler" / "reference"


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Factory: ``tiny_pipeline("sd2")`` -> folder of that variant, made once per session."""
    from tests.tiny_pipelines import make_tiny_pipeline

    made = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_tiny_pipeline(tmp_path_factory.mktemp(f"tiny-{variant}"), variant)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """android-int8 and android-fp32 bundles of the reference model, built once (lowering is slow)."""
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    out = tmp_path_factory.mktemp("build")
    reports = {t: build(None, t, out, UI(quiet=True)) for t in ("android-int8", "android-fp32")}
    return {t: (out / t, reports[t]) for t in reports}


@pytest.fixture(scope="session")
def ios_bundles(tmp_path_factory):
    """ios-fp16, ios-w4 and ios-et bundles of the reference model (Core ML conversion takes seconds, not minutes)."""
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    out = tmp_path_factory.mktemp("ios")
    reports = {t: build(None, t, out, UI(quiet=True)) for t in ("ios-fp16", "ios-w4", "ios-et")}
    return {t: (out / t, reports[t]) for t in reports}
