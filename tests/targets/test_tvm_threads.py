"""TVM's kernels get every physical core: TVM's own default is half the logical CPUs on x86."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("tvm")

# What TVM's runtime reports for its thread pool once lgc has set it up, in a fresh process.
PROBE = ("from lgc.targets.tvm.threads import use_physical_cores; use_physical_cores(); "
         "import tvm; print(tvm.runtime.num_threads())")


def _probe(env: dict) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    run = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.strip().splitlines()[-1])


def test_tvm_runs_on_every_physical_core():
    import psutil

    # On this 2-core machine without SMT, TVM alone reports 1.
    assert _probe({}) == psutil.cpu_count(logical=False)


def test_a_thread_count_the_user_set_is_kept():
    assert _probe({"TVM_NUM_THREADS": "1"}) == 1
    assert _probe({"OMP_NUM_THREADS": "1"}) == 1
