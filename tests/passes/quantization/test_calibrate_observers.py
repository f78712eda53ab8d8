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


def _annotated(dynamic: bool):
    from tests.passes.quantization.conftest import make_state

    state, calib = make_state()
    AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",), dynamic_activations=("unet",) if dynamic else ()))
    return state, calib


def test_only_statically_quantized_graphs_need_calibration_data():
    from lgc.passes.quantization.calibrate_observers import needs_data

    assert not needs_data(_annotated(dynamic=True)[0].model.components["unet"].graph)
    assert needs_data(_annotated(dynamic=False)[0].model.components["unet"].graph)


def test_a_dynamic_graph_observed_on_its_example_inputs_converts_to_what_calibration_data_gives():
    from lgc.passes.quantization.calibrate_observers import CalibrateObservers
    from lgc.passes.quantization.convert_pt2e import ConvertPt2e

    fed, calib = _annotated(dynamic=True)
    with torch.no_grad():
        for args in calib:
            fed.model.components["unet"].graph(*args)
    ConvertPt2e().run(fed, ConvertPt2e.Config())
    once, _ = _annotated(dynamic=True)
    res = CalibrateObservers().run(once, CalibrateObservers.Config())  # no sampler, no pipeline: it must not need them
    assert res.details["observers"] == {"unet": "weights only"}
    ConvertPt2e().run(once, ConvertPt2e.Config())
    a, b = (s.model.components["unet"].graph for s in (fed, once))
    assert a.code == b.code
    x = calib[3][0]
    assert torch.equal(a(x), b(x))
    for (ka, ta), (kb, tb) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert ka == kb and torch.equal(ta, tb)
