"""How many threads TVM's compiled kernels run on: this machine's physical cores, not TVM's guess.

Unless ``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS`` says otherwise, TVM's
thread pool takes half the logical CPUs on x86 (``MaxConcurrency`` in its
threading_backend.cc: "ignore hyper-threading"). Where there is no SMT,
as on this 2-core machine and most cloud VMs, that is half the cores:
every parallel loop of the tuned reference U-Net ran on one thread, 16.0 ms
a step against 11.6 ms on both cores, measured side by side. MetaSchedule's
runner processes inherit the same default, so tuning timed candidates on
one core too.
"""

from __future__ import annotations

import os


def use_physical_cores() -> int:
    """Set ``TVM_NUM_THREADS`` to the physical cores unless the user set a count; the count TVM will use.

    TVM reads it once, when its thread pool starts (the first parallel
    kernel in the process), and worker processes inherit it: call this
    before anything runs a TVM kernel (constant folding in a build does).
    """
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var])
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    os.environ["TVM_NUM_THREADS"] = str(cores)
    return cores
