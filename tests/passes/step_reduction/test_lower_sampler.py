"""The sampler constants replayed by lgc's loop reproduce diffusers' own schedulers."""

from __future__ import annotations

import json

import pytest
import torch

from lgc.compiler.errors import UsageError
from lgc.compiler.pass_manager import make_config
from lgc.passes.step_reduction.lower_sampler import LowerSampler
from lgc.passes.step_reduction.solvers import SOLVERS

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
DIFFUSERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}


def fake_eps(x: torch.Tensor, t: float) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for a U-Net: depends on both the latents and the timestep."""
    return torch.tanh(x * (0.3 + t / 1000.0)) + 0.1 * torch.sin(x * 3.0 + t / 100.0)


def replay(plan, noise):
    """An independent, plain implementation of the manifest's recurrence."""
    xs, es = [noise * plan.init_noise_sigma], []
    for i, t in enumerate(plan.timesteps):
        es.insert(0, fake_eps(xs[0] * plan.input_scale[i], t))
        xs.insert(0, sum(c * x for c, x in zip(plan.x_coef[i], xs)) + sum(c * e for c, e in zip(plan.eps_coef[i], es)))
    return xs[0]


def diffusers_run(solver, steps, noise):
    import diffusers

    sched = getattr(diffusers, DIFFUSERS[solver]).from_config(SD_SCHEDULER)
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = fake_eps(sched.scale_model_input(x, t), float(t))
        x = sched.step(eps, t, x).prev_sample
    return x, [float(t) for t in sched.timesteps]


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("steps", [1, 4, 8, 20])
def test_constants_match_diffusers_scheduler(solver, steps):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    plan = SOLVERS[solver](SD_SCHEDULER, steps, 5.0)
    want, timesteps = diffusers_run(solver, steps, noise)
    assert plan.timesteps == pytest.approx(timesteps)
    got = replay(plan, noise)
    assert torch.allclose(got, want.to(got.dtype), atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_pass_sets_plan_and_reports_change():
    class State:
        sampler = None

        class model:
            scheduler_config = SD_SCHEDULER

    state = State()
    res = LowerSampler().run(state, LowerSampler.Config(solver="ddim", steps=4))
    assert res.changed and state.sampler.num_steps == 4 and len(state.sampler.x_coef) == 4
    json.dumps(state.sampler.to_json())  # goes into the manifest as it is
    again = LowerSampler().run(state, LowerSampler.Config(solver="ddim", steps=4))
    assert not again.changed


@pytest.mark.parametrize("opts", [{"solver": "heun"}, {"steps": 0}, {"bogus": 1}])
def test_bad_options_are_usage_errors(opts):
    with pytest.raises(UsageError):
        make_config(LowerSampler, opts)
