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
DIFFUSERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
             "lcm": "LCMScheduler"}


def fake_eps(x: torch.Tensor, t: float) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for a U-Net: depends on both the latents and the timestep."""
    return torch.tanh(x * (0.3 + t / 1000.0)) + 0.1 * torch.sin(x * 3.0 + t / 100.0)


def replay(plan, noise, seed=0):
    """An independent, plain implementation of the manifest's recurrence (z_i drawn in step order from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    xs, es = [noise * plan.init_noise_sigma], []
    for i, t in enumerate(plan.timesteps):
        es.insert(0, fake_eps(xs[0] * plan.input_scale[i], t))
        nxt = sum(c * x for c, x in zip(plan.x_coef[i], xs)) + sum(c * e for c, e in zip(plan.eps_coef[i], es))
        if plan.noise_coef and plan.noise_coef[i]:
            nxt = nxt + plan.noise_coef[i] * torch.randn(noise.shape, generator=gen, dtype=noise.dtype)
        xs.insert(0, nxt)
    return xs[0]


def diffusers_run(solver, steps, noise, seed=0):
    import diffusers

    sched = getattr(diffusers, DIFFUSERS[solver]).from_config(SD_SCHEDULER)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = fake_eps(sched.scale_model_input(x, t), float(t))
        x = sched.step(eps, t, x, generator=gen).prev_sample if solver == "lcm" else sched.step(eps, t, x).prev_sample
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


# diffusers' DDIM and Euler take no explicit timesteps (DDIM steps back by a fixed stride); these two do.
@pytest.mark.parametrize("solver", ["dpmpp_2m", "lcm"])
def test_explicit_timesteps_match_diffusers_given_the_same(solver):
    """An optimised schedule is only as good as its constants: replay them against diffusers set to the same timesteps."""
    import diffusers

    ts = [961, 700, 420, 230, 90, 15]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plan = SOLVERS[solver](SD_SCHEDULER, len(ts), 5.0, timesteps=ts)
    sched = getattr(diffusers, DIFFUSERS[solver]).from_config(SD_SCHEDULER)
    sched.set_timesteps(timesteps=ts)
    gen = torch.Generator().manual_seed(0)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = fake_eps(sched.scale_model_input(x, t), float(t))
        x = sched.step(eps, t, x, generator=gen).prev_sample if solver == "lcm" else sched.step(eps, t, x).prev_sample
    assert plan.timesteps == [float(t) for t in sched.timesteps]
    got = replay(plan, noise)
    assert torch.allclose(got, x.to(got.dtype), atol=1e-4, rtol=1e-4), (got - x).abs().max()


@pytest.mark.parametrize("ts", [[500, 600], [10, 10], [5, -1]])
def test_bad_explicit_timesteps(ts):
    with pytest.raises(ValueError, match="decreasing and non-negative"):
        SOLVERS["ddim"](SD_SCHEDULER, 2, 5.0, timesteps=ts)


@pytest.mark.parametrize("opts", [{"solver": "heun"}, {"steps": 0}, {"bogus": 1}])
def test_bad_options_are_usage_errors(opts):
    with pytest.raises(UsageError):
        make_config(LowerSampler, opts)
