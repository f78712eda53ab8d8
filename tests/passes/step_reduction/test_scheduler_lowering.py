"""Sampler constants lowered from diffusers' schedulers reproduce diffusers, or are refused by name.

Three references, none of them lgc's code:
- diffusers' own full-loop expectations (tests/schedulers in its repository: their
  configs, their deterministic sample and dummy model, their tolerances);
- diffusers' pipeline loop (set_timesteps, scale_model_input, step), written out
  here, over a grid of classes x config keys x step counts;
- the refusals: every one names the class or key.

`LGC_SAMPLER_GRID=full python -m pytest tests/passes/step_reduction/test_scheduler_lowering.py -k grid`
runs the larger grid (every step count of the issue that asked for it, 50 included).
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from lgc.compiler.errors import UnsupportedModelError, UsageError
from lgc.passes.step_reduction.sampler_plan import check_plan
from lgc.passes.step_reduction.scheduler_lowering import NAMED, SUPPORTED, lower_sampler

# ---------------------------------------------------------------- the manifest loop, written out plainly


def replay(plan: dict, noise: torch.Tensor, model, draw) -> torch.Tensor:
    """The README's app loop: ``draw()`` is called for z_i only on steps whose noise_coef is non-zero."""
    xs, outs = [noise.double() * plan["init_noise_sigma"]], []
    for i, t in enumerate(plan["timesteps"]):
        outs.insert(0, model((xs[0] * plan["input_scale"][i]).float(), t).double())
        nxt = sum(c * x for c, x in zip(plan["x_coef"][i], xs)) + sum(c * e for c, e in zip(plan["eps_coef"][i], outs))
        if plan["noise_coef"] and plan["noise_coef"][i]:
            nxt = nxt + plan["noise_coef"][i] * draw(i).double()
        xs.insert(0, nxt)
    return xs[0]


# ---------------------------------------------------------------- 1. diffusers' own full-loop expectations


def dummy_sample_deter() -> torch.Tensor:
    """diffusers' SchedulerCommonTest.dummy_sample_deter: a 4x3x8x8 ramp."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """diffusers' SchedulerCommonTest.dummy_model: sample * t / (t + 1)."""
    t = float(t)
    return x * t / (t + 1)


LINEAR = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
DPM = dict(LINEAR, solver_order=2, prediction_type="epsilon", thresholding=False, sample_max_value=1.0,
           algorithm_type="dpmsolver++", solver_type="midpoint", lambda_min_clipped=-float("inf"), variance_type=None,
           final_sigmas_type="sigma_min")
LCM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
# (class, config, steps, eta, expected sum or None, expected mean, sum tolerance, mean tolerance), from diffusers'
# tests/schedulers/test_scheduler_*.py. Their DDIM config sets clip_sample=True, which lgc refuses; in those four
# loops clipping never engages (diffusers gives the same sums with it off), so they are replayed with it off.
UPSTREAM = {
    "ddim_no_noise": ("DDIMScheduler", dict(LINEAR, clip_sample=False), 10, 0.0, 172.0067, 0.223967, 1e-2, 1e-3),
    "ddim_v_prediction": ("DDIMScheduler", dict(LINEAR, clip_sample=False, prediction_type="v_prediction"), 10, 0.0, 52.5302, 0.0684, 1e-2, 1e-3),
    "ddim_set_alpha_to_one": ("DDIMScheduler", dict(LINEAR, clip_sample=False, set_alpha_to_one=True, beta_start=0.01), 10, 0.0, 149.8295, 0.1951, 1e-2, 1e-3),
    "ddim_no_set_alpha_to_one": ("DDIMScheduler", dict(LINEAR, clip_sample=False, set_alpha_to_one=False, beta_start=0.01), 10, 0.0, 149.0784, 0.1941, 1e-2, 1e-3),
    "dpm_multi_no_noise": ("DPMSolverMultistepScheduler", dict(DPM, lower_order_final=False, euler_at_final=False), 10, 0.0, None, 0.3301, None, 1e-3),
    "dpm_multi_v_prediction": ("DPMSolverMultistepScheduler", dict(DPM, lower_order_final=False, prediction_type="v_prediction"), 10, 0.0, None, 0.2251, None, 1e-3),
    "dpm_multi_karras_v": ("DPMSolverMultistepScheduler", dict(DPM, lower_order_final=False, prediction_type="v_prediction", use_karras_sigmas=True), 10, 0.0, None, 0.2096, None, 1e-3),
    "dpm_multi_lu_v": ("DPMSolverMultistepScheduler", dict(DPM, lower_order_final=False, prediction_type="v_prediction", use_lu_lambdas=True), 10, 0.0, None, 0.1554, None, 1e-3),
    "dpm_single_no_noise": ("DPMSolverSinglestepScheduler", DPM, 10, 0.0, None, 0.2791, None, 1e-3),
    "dpm_single_karras": ("DPMSolverSinglestepScheduler", dict(DPM, use_karras_sigmas=True), 10, 0.0, None, 0.2248, None, 1e-3),
    "dpm_single_v_prediction": ("DPMSolverSinglestepScheduler", dict(DPM, prediction_type="v_prediction"), 10, 0.0, None, 0.1453, None, 1e-3),
    "dpm_single_karras_v": ("DPMSolverSinglestepScheduler", dict(DPM, prediction_type="v_prediction", use_karras_sigmas=True), 10, 0.0, None, 0.0649, None, 1e-3),
    "unipc_no_noise": ("UniPCMultistepScheduler", dict(LINEAR, solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min"), 10, 0.0, None, 0.2464, None, 1e-3),
    "unipc_karras": ("UniPCMultistepScheduler", dict(LINEAR, solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min", use_karras_sigmas=True), 10, 0.0, None, 0.2925, None, 1e-3),
    "unipc_v_prediction": ("UniPCMultistepScheduler", dict(LINEAR, solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min", prediction_type="v_prediction"), 10, 0.0, None, 0.1014, None, 1e-3),
    "unipc_karras_v": ("UniPCMultistepScheduler", dict(LINEAR, solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min", prediction_type="v_prediction", use_karras_sigmas=True), 10, 0.0, None, 0.1966, None, 1e-3),
    "deis_no_noise": ("DEISMultistepScheduler", dict(LINEAR, solver_order=2), 10, 0.0, None, 0.23916, None, 1e-3),
    "deis_v_prediction": ("DEISMultistepScheduler", dict(LINEAR, solver_order=2, prediction_type="v_prediction"), 10, 0.0, None, 0.091, None, 1e-3),
    "lcm_onestep": ("LCMScheduler", LCM, 1, 0.0, 18.7097, 0.0244, 1e-3, 1e-3),
    "lcm_multistep": ("LCMScheduler", LCM, 10, 0.0, 197.7616, 0.2575, 1e-3, 1e-3),
    "tcd_onestep_deter": ("TCDScheduler", LCM, 1, 0.0, 29.8715, 0.0389, 1e-3, 1e-3),
    "tcd_multistep_deter": ("TCDScheduler", LCM, 10, 0.0, 181.2040, 0.2359, 1e-3, 1e-3),
}


@pytest.mark.parametrize("case", sorted(UPSTREAM))
def test_diffusers_full_loop_expectations(case):
    cls, cfg, steps, eta, want_sum, want_mean, tol_sum, tol_mean = UPSTREAM[case]
    plan = lower_sampler({"_class_name": cls, **cfg}, steps, eta=eta)
    gen = torch.manual_seed(0)  # their loops draw the stochastic steps' noise from this, in step order
    sample = replay(plan, dummy_sample_deter(), dummy_model, lambda i: torch.randn((4, 3, 8, 8), generator=gen))
    if want_sum is not None:
        assert abs(sample.abs().sum().item() - want_sum) < tol_sum
    assert abs(sample.abs().mean().item() - want_mean) < tol_mean


def test_diffusers_ddpm_full_loop_config_is_refused_by_name():
    """Their DDPM loop clips (clip_sample=True, and it engages there): lgc cannot, and says which key."""
    cfg = dict(LINEAR, variance_type="fixed_small", clip_sample=True, _class_name="DDPMScheduler")
    with pytest.raises(UnsupportedModelError, match="clip_sample"):
        lower_sampler(cfg, 1000)


# ---------------------------------------------------------------- 2. the differential grid against diffusers' loop

BASE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            clip_sample=False, set_alpha_to_one=False)
# One key toggled at a time from BASE, where the class has that key.
VARIANTS = [
    {}, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {"beta_schedule": "squaredcos_cap_v2"},
    {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"}, {"timestep_spacing": "leading", "steps_offset": 0},
    {"prediction_type": "v_prediction"}, {"prediction_type": "sample"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, {"set_alpha_to_one": True},
    {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_lu_lambdas": True},
    {"final_sigmas_type": "sigma_min"}, {"lower_order_final": False}, {"euler_at_final": True},
    {"algorithm_type": "dpmsolver"}, {"algorithm_type": "sde-dpmsolver++"}, {"algorithm_type": "sde-dpmsolver"},
    {"solver_order": 1}, {"solver_order": 3}, {"solver_type": "heun"}, {"solver_type": "bh1"},
    {"interpolation_type": "log_linear"}, {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    {"variance_type": "fixed_large"}, {"original_inference_steps": 100}, {"timestep_scaling": 5.0},
    {"trained_betas": [float(b) for b in torch.linspace(0.0001, 0.02, 1000)]},
]
NONLINEAR = [{"clip_sample": True}, {"thresholding": True}]
STEPS = (1, 2, 3, 4, 7, 8, 10, 15, 25, 50) if os.environ.get("LGC_SAMPLER_GRID") == "full" else (1, 3, 8, 25)


def class_keys(cls_name: str) -> set:
    import diffusers

    return set(inspect.signature(getattr(diffusers, cls_name).__init__).parameters)


def stand_in(x: torch.Tensor, t) -> torch.Tensor:
    """A nonlinear function of the latents and the timestep, written independently of lgc's."""
    t = float(t)
    return torch.tanh(x * (0.3 + 0.2 * torch.cos(torch.tensor(t / 97.0)))) + 0.1 * torch.sin(x * 3.0 + t / 100.0)


def diffusers_loop(cls_name: str, cfg: dict, steps: int, noise: torch.Tensor):
    """StableDiffusionPipeline's denoising loop, with every noise draw recorded by step."""
    import diffusers

    sched = getattr(diffusers, cls_name).from_config(cfg)
    sched.set_timesteps(steps)
    gen, draws, step = torch.Generator().manual_seed(7), {}, [0]
    module = __import__(type(sched).__module__, fromlist=["randn_tensor"])

    def randn(shape, generator=None, device=None, dtype=None, layout=None, **_):
        draws[step[0]] = torch.randn(shape, generator=gen, dtype=torch.float32)
        return draws[step[0]]

    kw = {"eta": 0.0} if "eta" in inspect.signature(sched.step).parameters else {}
    old = getattr(module, "randn_tensor", None)  # schedulers that never draw noise do not import it
    module.randn_tensor = randn
    try:
        x = noise * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            step[0] = i
            out = stand_in(sched.scale_model_input(x, t), t)
            x = sched.step(out, t, x, **kw).prev_sample
    finally:
        if old is None:
            del module.randn_tensor
        else:
            module.randn_tensor = old
    return x, draws, [float(t) for t in sched.timesteps]


def grid_cases():
    for cls_name in SUPPORTED:
        keys = class_keys(cls_name)
        for v in VARIANTS + NONLINEAR:
            if all(k in keys for k in v):
                yield cls_name, v


def grid_outcome(cls_name: str, variant: dict, steps: int) -> str:
    cfg = {**{k: v for k, v in BASE.items() if k in class_keys(cls_name)}, **variant}
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    try:
        want, draws, timesteps = diffusers_loop(cls_name, cfg, steps, noise)
    except Exception:
        want = None  # diffusers itself cannot run this config: lgc must refuse it, not emit a plan
    try:
        plan = lower_sampler({"_class_name": cls_name, **cfg}, steps)
    except (UnsupportedModelError, UsageError) as e:
        named = cls_name in str(e) or any(k in str(e) for k in variant)
        return "refused" if named else f"refused without naming the class or key: {e}"
    if want is None:
        return "plan emitted where diffusers fails"
    check_plan(plan)
    if plan["timesteps"] != timesteps:
        return "different timesteps"
    got = replay(plan, noise, stand_in, lambda i: draws[i])
    err = float((got - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-6))
    return "same" if err < 1e-4 else f"silently different ({err:.2g})"


@pytest.mark.parametrize("cls_name,variant", list(grid_cases()), ids=lambda v: v if isinstance(v, str) else ",".join(v) or "base")
def test_grid_against_diffusers_loop(cls_name, variant):
    outcomes = {n: grid_outcome(cls_name, variant, n) for n in STEPS}
    if any(k in variant for k in ("clip_sample", "thresholding")):
        assert set(outcomes.values()) == {"refused"}, outcomes
    else:
        assert set(outcomes.values()) <= {"same", "refused"}, outcomes


def test_the_grid_mostly_lowers():
    """A grid that only refuses would pass the test above: most of the base cases must lower and match."""
    same = sum(grid_outcome(c, {}, 8) == "same" for c in SUPPORTED)
    assert same == len(SUPPORTED)


# ---------------------------------------------------------------- 3. the model's own scheduler, names, refusals


def test_the_models_own_scheduler_is_the_default():
    cfg = dict(BASE, _class_name="EulerAncestralDiscreteScheduler", timestep_spacing="trailing")  # SD-Turbo's
    plan = lower_sampler(cfg, 4, guidance_scale=1.0)
    assert plan["solver"] == "EulerAncestralDiscreteScheduler"
    assert plan["scheduler"]["class"] == "EulerAncestralDiscreteScheduler"
    assert plan["scheduler"]["config"]["timestep_spacing"] == "trailing"
    assert plan["noise_coef"] is not None  # ancestral: fresh noise every step
    assert plan["timesteps"] == [999.0, 749.0, 499.0, 249.0]


def test_a_named_solver_swaps_the_class_as_from_config_does():
    cfg = dict(BASE, _class_name="PNDMScheduler", skip_prk_steps=True)
    plan = lower_sampler(cfg, 8, solver="dpmpp_2m_sde")
    assert plan["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert plan["scheduler"]["config"]["algorithm_type"] == "sde-dpmsolver++"
    assert plan["scheduler"]["config"]["beta_schedule"] == "scaled_linear"  # the model's noise schedule carried over
    assert plan["noise_coef"] is not None


def test_missing_keys_take_the_scheduler_class_defaults():
    """A minimal LCM config is LCMScheduler's defaults (scaled_linear 0.00085-0.012), not linear 0.0001-0.02."""
    plan = lower_sampler({"_class_name": "LCMScheduler"}, 4)
    assert plan["scheduler"]["config"]["beta_schedule"] == "scaled_linear"
    assert plan["scheduler"]["config"]["beta_start"] == pytest.approx(0.00085)


def test_heun_counts_model_evaluations():
    plan = lower_sampler(dict(BASE, _class_name="HeunDiscreteScheduler"), 4)
    assert plan["inference_steps"] == 4 and plan["num_steps"] == 7 == len(plan["x_coef"])


@pytest.mark.parametrize("steps", [61, 103, 121])
def test_trailing_spacing_with_one_more_timestep(steps):
    """DDIM trailing can visit n + 1 timesteps; every per-step array has exactly that many entries."""
    plan = lower_sampler(dict(BASE, _class_name="DDIMScheduler", timestep_spacing="trailing"), steps)
    n = plan["num_steps"]
    assert all(len(plan[k]) == n for k in ("timesteps", "input_scale", "x_coef", "eps_coef"))


@pytest.mark.parametrize("cfg,key", [
    ({"_class_name": "DDIMScheduler"}, "clip_sample"),  # DDIMScheduler's default is clip_sample=True
    (dict(BASE, _class_name="DPMSolverMultistepScheduler", thresholding=True), "thresholding"),
    (dict(BASE, _class_name="DDPMScheduler", variance_type="learned_range"), "variance_type"),
    (dict(BASE, _class_name="DDIMScheduler", prediction_type="flow"), "prediction_type"),
    (dict(BASE, _class_name="FlowMatchEulerDiscreteScheduler"), "FlowMatchEulerDiscreteScheduler"),
    (dict(BASE, _class_name="IPNDMScheduler"), "IPNDMScheduler"),
])
def test_refusals_name_the_key_or_class(cfg, key):
    with pytest.raises(UnsupportedModelError, match=key) as e:
        lower_sampler(cfg, 8)
    assert e.value.exit_code == 4 and "\n" not in str(e.value)


def test_overrides_lift_a_refusal():
    plan = lower_sampler({"_class_name": "DDIMScheduler"}, 8, overrides={"clip_sample": False})
    assert plan["scheduler"]["config"]["clip_sample"] is False


@pytest.mark.parametrize("args", [dict(solver="bogus"), dict(steps=0), dict(cfg={})])
def test_bad_arguments_are_usage_errors(args):
    with pytest.raises(UsageError):
        lower_sampler(args.get("cfg", dict(BASE, _class_name="DDIMScheduler")), args.get("steps", 4), solver=args.get("solver"))


def test_explicit_timesteps_match_diffusers_given_the_same():
    import diffusers

    ts = [961, 700, 420, 230, 90, 15]
    cfg = dict(BASE, _class_name="DPMSolverMultistepScheduler")
    plan = lower_sampler(cfg, len(ts), timesteps=ts)
    sched = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
    sched.set_timesteps(timesteps=ts)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(stand_in(sched.scale_model_input(x, t), t), t, x).prev_sample
    assert plan["timesteps"] == [float(t) for t in ts]
    got = replay(plan, noise, stand_in, None)
    assert torch.allclose(got, x.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ts", [[500, 600], [10, 10], [5, -1], [1000, 3]])
def test_bad_explicit_timesteps(ts):
    with pytest.raises(UsageError, match="decreasing"):
        lower_sampler(dict(BASE, _class_name="DPMSolverMultistepScheduler"), 2, timesteps=ts)


def test_explicit_timesteps_need_a_scheduler_that_takes_them():
    with pytest.raises(UsageError, match="DDIMScheduler.set_timesteps takes no explicit timesteps"):
        lower_sampler(dict(BASE, _class_name="DDIMScheduler"), 2, timesteps=[800, 400])


def test_named_solvers_all_lower():
    for name in NAMED:
        plan = lower_sampler(dict(BASE, _class_name="PNDMScheduler"), 4, solver=name)
        assert plan["solver"] == name


def test_public_function():
    import lgc

    plan = lgc.lower_sampler(dict(BASE, _class_name="EulerDiscreteScheduler"), 4, guidance_scale=3.0)
    assert plan["guidance_scale"] == 3.0 and plan["num_steps"] == 4


@pytest.mark.parametrize("broken", [
    lambda p: p["x_coef"].pop(),
    lambda p: p["timesteps"].append(1.0),
    lambda p: p.__setitem__("noise_coef", [0.1]),
    lambda p: p["eps_coef"].__setitem__(0, []),
    lambda p: p["input_scale"].__setitem__(0, float("nan")),
])
def test_plan_invariants(broken):
    plan = lower_sampler(dict(BASE, _class_name="DPMSolverMultistepScheduler"), 4)
    check_plan(plan)
    broken(plan)
    with pytest.raises(ValueError):
        check_plan(plan)
