from __future__ import annotations

import torch

from lgc.passes.quantization.annotate_xnnpack_w8a8 import AnnotateXnnpackW8A8
from lgc.passes.quantization.calibrate_observers import stratified


def test_stratified_takes_every_timestep_from_different_runs():
    runs, steps = 8, 5
    samples = [(r, i) for r in range(runs) for i in range(steps)]
    picked = stratified(samples, steps, 3)
    assert len(picked) == steps * 3
    for i in range(steps):
        at_i = [s for s in picked if s[1] == i]
        assert len(at_i) == 3 and len({r for r, _ in at_i}) == 3
    # Different timesteps start from different runs, so every run is used.
    assert {r for r, _ in picked} == set(range(runs))
    assert stratified(samples, steps, 0) == samples


def test_observers_record_calibration_ranges(conv_state):
    from tests.passes.quantization.conftest import make_state

    state, calib = make_state()
    AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",)))
    gm = state.model.components["unet"].graph
    obs = [m for n, m in gm.named_modules() if "activation_post_process" in n and hasattr(m, "min_val")]

    def calibrated(m):
        return m.min_val.numel() > 0 and bool(torch.isfinite(m.min_val).all()) and bool((m.min_val <= m.max_val).all())

    assert obs and not any(calibrated(m) for m in obs)
    with torch.no_grad():
        for args in calib:
            gm(*args)
    assert all(calibrated(m) for m in obs)
