"""A fixed eager-torch workload timed beside the artifacts, so latencies compare across machines and runs.

CI machines differ in speed and are noisy. A latency alone cannot be
compared with last week's; its ratio to a workload measured in the same
process, minutes apart, can. The workload mixes the two kinds of work a
diffusion step is made of (3x3 convolutions and attention-sized matrix
products) at a size that takes a few milliseconds on one core.
"""

from __future__ import annotations

import torch

from lgc.runtime_harness.runners import median_latency_ms

YARDSTICK_VERSION = 1  # bump when the workload changes: ratios of different versions are not comparable


def _workload():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 32, 32, generator=g)
    w = torch.randn(64, 64, 3, 3, generator=g) * 0.05
    a = torch.randn(256, 64, generator=g)

    def run():
        with torch.no_grad():
            y = torch.nn.functional.conv2d(x, w, padding=1)
            s = torch.softmax(a @ a.T, dim=-1)
            return y.sum() + (s @ a).sum()

    return run


def yardstick_ms(repeats: int = 15) -> float:
    """Median wall time of the fixed workload, in milliseconds."""
    return median_latency_ms(_workload(), (), repeats=repeats, warmup=2)
