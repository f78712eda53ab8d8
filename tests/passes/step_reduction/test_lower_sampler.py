"""The lower_sampler pass: the model's own scheduler by default, --solver and config keys over it, refusals as exit 4.

The constants themselves are checked against diffusers in test_scheduler_lowering.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lgc.compiler.errors import UnsupportedModelError, UsageError
from lgc.compiler.pass_manager import make_config
from lgc.passes.step_reduction.lower_sampler import LowerSampler

SD_SCHEDULER = dict(_class_name="PNDMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True,
                    steps_offset=1, prediction_type="epsilon")


def state_for(cfg: dict):
    return SimpleNamespace(sampler=None, model=SimpleNamespace(scheduler_config=cfg))


def test_pass_lowers_the_models_own_scheduler_and_reports_change():
    state = state_for(SD_SCHEDULER)
    res = LowerSampler().run(state, LowerSampler.Config(steps=4))
    plan = state.sampler
    assert res.changed and res.details["scheduler"] == "PNDMScheduler" and plan.solver == "PNDMScheduler"
    assert plan.num_steps == 5 == len(plan.x_coef)  # PLMS repeats its first timestep
    json.dumps(plan.to_json(), allow_nan=False)  # goes into the manifest as it is, strict JSON
    again = LowerSampler().run(state, LowerSampler.Config(steps=4))
    assert not again.changed


def test_v_prediction_compiles():
    state = state_for({**SD_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction"})
    LowerSampler().run(state, LowerSampler.Config(steps=4))
    assert state.sampler.prediction_type == "v_prediction"


def test_scheduler_config_option_sets_keys_over_the_models():
    cfg = {**SD_SCHEDULER, "_class_name": "DDIMScheduler", "clip_sample": True}
    with pytest.raises(UnsupportedModelError, match="clip_sample"):
        LowerSampler().run(state_for(cfg), LowerSampler.Config(steps=4))
    state = state_for(cfg)
    LowerSampler().run(state, make_config(LowerSampler, {"steps": 4, "scheduler_config": {"clip_sample": False}}))
    assert state.sampler.scheduler["config"]["clip_sample"] is False


@pytest.mark.parametrize("opts", [{"solver": "euler_turbo"}, {"steps": 0}, {"bogus": 1}, {"scheduler_config": [1]}])
def test_bad_options_are_usage_errors(opts):
    with pytest.raises(UsageError):
        make_config(LowerSampler, opts)
