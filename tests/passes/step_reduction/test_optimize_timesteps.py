from __future__ import annotations

from types import SimpleNamespace

import pytest

from lgc.compiler.errors import UsageError
from lgc.passes.step_reduction.optimize_timesteps import OptimizeTimesteps, search_timesteps
from lgc.passes.step_reduction.scheduler_lowering import resolve_scheduler, lower_scheduler


def plan_of(model, solver: str, steps: int):
    label, cls_name, cfg = resolve_scheduler(model.scheduler_config, solver)
    return lower_scheduler(cls_name, cfg, steps, 5.0, label=label)


def test_search_finds_a_known_optimum_and_keeps_order():
    target = [913, 640, 377, 121, 9]
    objective = lambda ts: sum((a - b) ** 2 for a, b in zip(ts, target))  # noqa: E731
    ts, val, evals = search_timesteps(objective, [999, 799, 599, 399, 199], 999)
    assert ts == target and val == 0 and evals > 10
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_search_never_leaves_the_valid_range():
    # The optimum lies outside [0, 999] and out of order: the search must stop at the walls.
    objective = lambda ts: sum((t - 5000) ** 2 for t in ts)  # noqa: E731
    ts, _, _ = search_timesteps(objective, [900, 500, 100], 999)
    assert ts[0] <= 999 and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0


@pytest.fixture(scope="module")
def tiny_state(tiny_pipeline, tmp_path_factory):
    from lgc.compiler.model_import import load_pipeline
    from lgc.targets.profiles import get_profile

    model = load_pipeline(tiny_pipeline("sd1"), get_profile("android-fp32").components, None)
    plan = plan_of(model, "dpmpp_2m", 4)
    return SimpleNamespace(model=model, sampler=plan, cache_dir=tmp_path_factory.mktemp("cache"))


def test_pass_lowers_the_fit_error_and_caches(tiny_state):
    default_ts = list(tiny_state.sampler.timesteps)
    cfg = OptimizeTimesteps.Config(schedule="optimized", reference_steps=20, fit_prompts=2)
    res = OptimizeTimesteps().run(tiny_state, cfg)
    d = res.details
    assert res.changed and d["cache"] == "miss" and d["default_timesteps"] == [int(t) for t in default_ts]
    assert d["fit_error_optimized"] < d["fit_error_default"]
    plan = tiny_state.sampler
    assert plan.schedule == "optimized" and plan.timesteps == [float(t) for t in d["timesteps"]] != default_ts
    # Second run: the same schedule from the cache, no search.
    tiny_state.sampler = plan_of(tiny_state.model, "dpmpp_2m", 4)
    again = OptimizeTimesteps().run(tiny_state, cfg)
    assert again.details["cache"] == "hit" and again.details["timesteps"] == d["timesteps"]


def test_default_schedule_is_a_no_op(tiny_state):
    before = tiny_state.sampler
    assert not OptimizeTimesteps().run(tiny_state, OptimizeTimesteps.Config()).changed and tiny_state.sampler is before


def test_lcm_is_refused(tiny_state):
    state = SimpleNamespace(model=tiny_state.model, sampler=plan_of(tiny_state.model, "lcm", 4), cache_dir=None)
    with pytest.raises(UsageError, match="needs an ODE solver"):
        OptimizeTimesteps().run(state, OptimizeTimesteps.Config(schedule="optimized"))


@pytest.mark.parametrize("solver,why", [("ddim", "takes no explicit timesteps"), ("heun", "one timestep per U-Net evaluation")])
def test_unsearchable_schedulers_are_refused_before_any_sampling(tiny_state, solver, why):
    state = SimpleNamespace(model=tiny_state.model, sampler=plan_of(tiny_state.model, solver, 4), cache_dir=None)
    with pytest.raises(UsageError, match=why):
        OptimizeTimesteps().run(state, OptimizeTimesteps.Config(schedule="optimized"))


def test_bad_schedule_name():
    with pytest.raises(ValueError, match="schedule must be"):
        OptimizeTimesteps.Config(schedule="fast")
