"""A diffusers scheduler lowered to a SamplerPlan by running it, not by re-deriving its formulas.

Most schedulers step by a fixed linear map of the current sample, the model
outputs seen so far and fresh Gaussian noise: the coefficients depend on the
config and the step, never on the values. Such a step maps a tensor whose
elements are *coefficients of symbols* exactly as it maps latents. So the
diffusers pipeline loop (``set_timesteps``, ``scale_model_input``, ``step``)
runs once on symbolic tensors, one element per symbol: the initial noise,
each step's model output and each step's noise draw. After it, every x_i is
known as a combination of the symbols, and each step's recurrence is solved
from them over the shortest history that reproduces it exactly. No config key
needs code here: whatever the scheduler does with it is in the probe.

Each plan is then replayed against the same scheduler on real numbers with a
nonlinear stand-in model; a plan that differs from diffusers is refused, never
shipped. Config keys that make a step nonlinear (clipping, thresholding) and
schedulers outside the tested set are refused by name first.
"""

from __future__ import annotations

import contextlib
import inspect
import math

import numpy as np
import torch

from lgc.compiler.errors import LgcError, UnsupportedModelError, UsageError
from lgc.passes.step_reduction.sampler_plan import SamplerPlan

# Checked against diffusers' own loop over grids of configs (tests/passes/step_reduction).
SUPPORTED = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "LCMScheduler", "TCDScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler",
)
# --solver names: a diffusers class and the config keys the name fixes, applied over the
# model's own config as ``Class.from_config(model_config, **keys)`` (diffusers' way of swapping).
NAMED = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
MAX_HISTORY = 16  # the longest recurrence looked for (PNDM's Runge-Kutta warm-up reaches 12 evaluations back; LMS needs 4)
EXACT = 1e-5  # residual of a solved recurrence, relative to the step's largest coefficient (float32 rounding is ~1e-7)
AGREE = 1e-4  # replayed plan against diffusers' loop on real numbers: max |difference| / max |diffusers|


def solver_names() -> list[str]:
    return list(NAMED) + list(SUPPORTED)


def resolve_scheduler(scheduler_config: dict, solver: str | None, overrides: dict | None = None) -> tuple[str, str, dict]:
    """(solver label, diffusers class name, config) for a model's scheduler config and an optional --solver."""
    overrides = dict(overrides or {})
    if solver in (None, "auto"):
        cls_name = scheduler_config.get("_class_name")
        if not cls_name:
            raise UsageError("the scheduler config has no _class_name; name a solver (--solver)")
        label = cls_name
    elif solver in NAMED:
        cls_name, fixed = NAMED[solver]
        overrides = {**fixed, **overrides}
        label = solver
    elif solver in SUPPORTED:
        cls_name, label = solver, solver
    else:
        raise UsageError(f"unknown solver {solver!r} (known: {', '.join(NAMED)}, or a scheduler class: {', '.join(SUPPORTED)})")
    if cls_name not in SUPPORTED:
        raise UnsupportedModelError(
            f"scheduler {cls_name} is not supported (lgc lowers {', '.join(SUPPORTED)}); pick one with --solver, "
            f"e.g. --solver dpmpp_2m")
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return label, cls_name, {**config, **overrides}


def _make(cls_name: str, config: dict):
    import diffusers

    return getattr(diffusers, cls_name).from_config(config)


def refuse_nonlinear(cls_name: str, cfg) -> None:
    """Config settings whose step is not a fixed multiply-add, named with what to set instead."""
    how = "set it in the model's scheduler/scheduler_config.json, or with --set 'lower_sampler.scheduler_config={...}', or pick another --solver"
    if cfg.get("clip_sample"):
        raise UnsupportedModelError(
            f"scheduler {cls_name}: clip_sample=true clips the predicted sample every step, which the manifest's multiply-add "
            f"loop cannot express; clip_sample=false: {how}")
    if cfg.get("thresholding"):
        raise UnsupportedModelError(
            f"scheduler {cls_name}: thresholding=true (dynamic thresholding of the predicted sample) is not a multiply-add; "
            f"thresholding=false: {how}")
    if cfg.get("variance_type") in ("learned", "learned_range"):
        raise UnsupportedModelError(
            f"scheduler {cls_name}: variance_type={cfg['variance_type']} needs a U-Net that predicts its variance; "
            f"variance_type=fixed_small: {how}")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise UnsupportedModelError(f"scheduler {cls_name}: prediction_type={pred!r} is not supported ({', '.join(PREDICTION_TYPES)})")


@contextlib.contextmanager
def _noise_from(draw):
    """Every noise draw of diffusers' schedulers goes through ``randn_tensor``; route it to ``draw(shape, dtype)``."""
    import sys

    import diffusers.schedulers  # noqa: F401  (loads the modules patched below)

    def fake(shape, generator=None, device=None, dtype=None, layout=None, **_):
        return draw(tuple(shape), dtype)

    patched = [(m, m.randn_tensor) for name, m in list(sys.modules.items())
               if name.startswith("diffusers.") and getattr(m, "randn_tensor", None) is not None]
    for m, _orig in patched:
        m.randn_tensor = fake
    try:
        yield
    finally:
        for m, orig in patched:
            m.randn_tensor = orig


def _set_timesteps(sched, cls_name: str, steps: int, timesteps) -> None:
    if timesteps is None:
        sched.set_timesteps(steps)
        return
    if not takes_timesteps(cls_name):
        takers = [c for c in SUPPORTED if takes_timesteps(c)]
        raise UsageError(f"{cls_name}.set_timesteps takes no explicit timesteps, so --schedule optimized cannot set them; "
                         f"use a solver whose scheduler does ({', '.join(takers)})")
    ts = [int(t) for t in timesteps]
    n_train = int(sched.config.num_train_timesteps)
    if len(ts) != steps or any(b >= a for a, b in zip(ts, ts[1:])) or min(ts) < 0 or max(ts) >= n_train:
        raise UsageError(f"timesteps must be {steps} distinct values, decreasing and in [0, {n_train}), got {list(timesteps)}")
    sched.set_timesteps(timesteps=ts)


def takes_timesteps(cls_name: str) -> bool:
    """Whether the class's ``set_timesteps`` accepts explicit timesteps (what ``--schedule optimized`` sets)."""
    import diffusers

    return "timesteps" in inspect.signature(getattr(diffusers, cls_name).set_timesteps).parameters


def _pipeline_loop(sched, x, model, draws, eta: float):
    """diffusers' text-to-image denoising loop (StableDiffusionPipeline's order of calls) on any tensors."""
    step_kw = {"eta": eta} if "eta" in inspect.signature(sched.step).parameters else {}
    xs, scaled = [x * float(sched.init_noise_sigma)], []
    for i, t in enumerate(sched.timesteps):
        draws.step = i
        inp = sched.scale_model_input(xs[-1], t)
        scaled.append(inp)
        with _noise_from(draws):
            xs.append(sched.step(model(i, inp, t), t, xs[-1], **step_kw).prev_sample)
    return xs, scaled


class _SymbolicNoise:
    """Noise draws as unit symbols (one per step), refusing a step that draws twice."""

    def __init__(self, first_symbol: int, n_symbols: int, cls_name: str):
        self.first, self.n, self.cls_name, self.step, self.drawn = first_symbol, n_symbols, cls_name, 0, set()

    def __call__(self, shape, dtype):
        if self.step in self.drawn:
            raise UnsupportedModelError(f"scheduler {self.cls_name} draws noise twice in one step; lgc's loop adds one draw per step")
        self.drawn.add(self.step)
        return _unit(self.first + self.step, self.n)


class _RecordedNoise:
    def __init__(self, shape, seed: int):
        self.gen, self.shape, self.step, self.by_step = torch.Generator().manual_seed(seed), shape, 0, {}

    def __call__(self, shape, dtype):
        z = torch.randn(self.shape, generator=self.gen, dtype=torch.float32)
        self.by_step[self.step] = z
        return z.to(dtype or torch.float32)


def _unit(k: int, n: int) -> torch.Tensor:
    v = torch.zeros(1, 1, 1, n, dtype=torch.float64)
    v[..., k] = 1.0
    return v


def _solve_recurrence(V: list[np.ndarray], E: np.ndarray, n: int, label: str):
    """Per step i: the x and output coefficients over the shortest history k <= K, and the noise coefficient."""
    x_coef, eps_coef, noise_coef = [], [], []
    for i in range(n):
        target = V[i + 1]
        scale = max(1.0, float(np.abs(target).max()))
        for K in range(min(i, MAX_HISTORY - 1) + 1):
            cols = [V[i - k] for k in range(K + 1)] + [E[1 + i - k] for k in range(K + 1)] + [E[1 + n + i]]
            A = np.stack(cols, axis=1)
            coef = np.linalg.lstsq(A, target, rcond=None)[0]
            if np.abs(A @ coef - target).max() <= EXACT * scale:
                break
        else:
            raise UnsupportedModelError(f"{label}: step {i} is not a fixed multiply-add of the last {MAX_HISTORY} samples, "
                                        f"model outputs and one noise draw; pick another --solver")
        x_coef.append([float(c) for c in coef[: K + 1]])
        eps_coef.append([float(c) for c in coef[K + 1: 2 * K + 2]])
        noise_coef.append(float(coef[-1]))
    return x_coef, eps_coef, noise_coef


def _stand_in(i: int, x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic nonlinear model of the latents and the timestep, outputs of unit scale like a U-Net's."""
    t = float(t)
    return torch.tanh(x * (0.4 + 0.1 * math.sin(t))) + 0.2 * torch.sin(x * 2.0 + 0.01 * t)


def replay(plan: dict, noise: torch.Tensor, model, draws: dict | None = None) -> torch.Tensor:
    """The manifest's recurrence, plainly (what an app implements); ``draws[i]`` is z_i."""
    xs, outs = [noise.double() * plan["init_noise_sigma"]], []
    for i, t in enumerate(plan["timesteps"]):
        outs.insert(0, model(i, (xs[0] * plan["input_scale"][i]).float(), t).double())
        nxt = sum(c * x for c, x in zip(plan["x_coef"][i], xs)) + sum(c * e for c, e in zip(plan["eps_coef"][i], outs))
        if plan.get("noise_coef") and plan["noise_coef"][i]:
            nxt = nxt + plan["noise_coef"][i] * draws[i].double()
        xs.insert(0, nxt)
    return xs[0]


def _verify(plan: SamplerPlan, cls_name: str, config: dict, steps: int, timesteps, eta: float, label: str) -> float:
    """Max |plan - diffusers| / max |diffusers| on real numbers; refuses the plan above AGREE."""
    sched = _make(cls_name, config)
    _set_timesteps(sched, cls_name, steps, timesteps)
    shape = (1, 4, 8, 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1234))
    draws = _RecordedNoise(shape, 4321)
    with torch.no_grad():
        want = _pipeline_loop(sched, noise.clone(), _stand_in, draws, eta)[0][-1].double()
        got = replay(plan.to_json(), noise, _stand_in, draws.by_step)
    if not torch.isfinite(want).all():
        raise UnsupportedModelError(f"{label}: diffusers' own loop gives non-finite latents at {steps} steps with this config")
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
    if not err <= AGREE:
        raise UnsupportedModelError(f"{label}: the lowered constants differ from diffusers' loop by {err:.2g} (relative) at "
                                    f"{steps} steps: its step is not a fixed multiply-add for this config; pick another --solver")
    return err


def lower_scheduler(cls_name: str, config: dict, steps: int, guidance_scale: float, timesteps=None, eta: float = 0.0,
                    label: str | None = None) -> SamplerPlan:
    """The plan of ``cls_name.from_config(config)`` at ``steps`` (or at explicit ``timesteps``), checked against diffusers."""
    label = label or cls_name
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    with _diffusers_quiet(label, cls_name):
        return _lower(cls_name, config, steps, guidance_scale, timesteps, eta, label)


@contextlib.contextmanager
def _diffusers_quiet(label: str, cls_name: str):
    """diffusers' config notices stay off the terminal; its own errors on a config become one refusal line."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    except LgcError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UnsupportedModelError(f"{label}: diffusers' {cls_name} fails on this config: {type(e).__name__}: {first}") from e
    finally:
        dlog.set_verbosity(level)


def _lower(cls_name, config, steps, guidance_scale, timesteps, eta, label) -> SamplerPlan:
    sched = _make(cls_name, config)
    refuse_nonlinear(cls_name, sched.config)
    _set_timesteps(sched, cls_name, steps, timesteps)
    n = len(sched.timesteps)
    n_sym = 1 + 2 * n  # initial noise, out_0..out_{n-1}, z_0..z_{n-1}
    E = np.eye(n_sym)
    with torch.no_grad(), np.errstate(all="ignore"):
        xs, scaled = _pipeline_loop(sched, _unit(0, n_sym), lambda i, _x, _t: _unit(1 + i, n_sym),
                                    _SymbolicNoise(1 + n, n_sym, cls_name), eta)
    V = [x.reshape(-1).double().numpy() for x in xs]
    if not all(np.isfinite(v).all() for v in V):
        raise UnsupportedModelError(f"{label}: diffusers' own step gives non-finite values at {steps} steps with this config "
                                    f"(a repeated timestep divides by zero); use another step count or solver")
    input_scale = []
    for i, (x, inp) in enumerate(zip(V, scaled)):
        inp = inp.reshape(-1).double().numpy()
        k = int(np.abs(x).argmax())
        s = float(inp[k] / x[k])
        if not np.allclose(inp, s * x, rtol=1e-6, atol=1e-9 * abs(s) * np.abs(x).max()):
            raise UnsupportedModelError(f"{label}: scale_model_input at step {i} is not one scale factor")
        input_scale.append(s)
    x_coef, eps_coef, noise_coef = _solve_recurrence(V, E, n, label)
    x0 = float(V[0][0])  # init_noise_sigma as the loop applied it
    cfg = {k: v for k, v in sched.config.items() if not k.startswith("_")}
    plan = SamplerPlan(
        solver=label, num_steps=n, timesteps=[float(t) for t in sched.timesteps], input_scale=input_scale, init_noise_sigma=x0,
        x_coef=x_coef, eps_coef=eps_coef, guidance_scale=float(guidance_scale),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        noise_coef=noise_coef if any(abs(c) > 0 for c in noise_coef) else None,
        inference_steps=steps, scheduler={"class": cls_name, "config": _jsonable(cfg), "eta": float(eta)},
    )
    _verify(plan, cls_name, config, steps, timesteps, eta, label)
    return plan


NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _jsonable(v):
    """Strict JSON for the manifest: non-finite floats (lambda_min_clipped = -inf) become "inf", "-inf", "nan"."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _from_json(cfg: dict) -> dict:
    return {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in cfg.items()}


def lower_sampler(scheduler_config: dict, steps: int, solver: str | None = None, guidance_scale: float = 1.0,
                  timesteps=None, eta: float = 0.0, overrides: dict | None = None) -> dict:
    """The manifest's ``sampler`` section for a model's scheduler config (``scheduler/scheduler_config.json``).

    ``solver`` None (or "auto") samples with the config's own ``_class_name``; a name from ``NAMED`` or a
    scheduler class swaps it as ``Class.from_config(config)`` does. Raises UnsupportedModelError (exit 4)
    naming the class or key lgc cannot lower exactly, UsageError (exit 2) for a bad argument.
    """
    label, cls_name, config = resolve_scheduler(scheduler_config, solver, overrides)
    return lower_scheduler(cls_name, config, steps, guidance_scale, timesteps=timesteps, eta=eta, label=label).to_json()


def why_not_searchable(plan: dict) -> str | None:
    """Why ``--schedule optimized`` cannot search this plan's timesteps, or None if it can."""
    cls_name = plan["scheduler"]["class"]
    if plan.get("noise_coef"):
        return f"--schedule optimized needs an ODE solver; {plan['solver']} adds fresh noise every step"
    if plan.get("inference_steps") is not None and plan["num_steps"] != plan["inference_steps"]:
        return (f"--schedule optimized searches one timestep per U-Net evaluation; {plan['solver']} makes "
                f"{plan['num_steps']} evaluations for {plan['inference_steps']} steps: pick another --solver")
    if not takes_timesteps(cls_name):
        return f"{cls_name}.set_timesteps takes no explicit timesteps, so --schedule optimized cannot set them: pick another --solver (e.g. dpmpp_2m)"
    return None


def relower(plan: dict, steps: int | None = None, timesteps=None) -> SamplerPlan:
    """The same scheduler (class, config, eta, guidance) as ``plan``, at another step count or explicit timesteps."""
    s = plan["scheduler"]
    steps = steps if steps is not None else (len(timesteps) if timesteps is not None else plan["inference_steps"])
    return lower_scheduler(s["class"], _from_json(s["config"]), steps, plan["guidance_scale"], timesteps=timesteps, eta=s.get("eta", 0.0),
                           label=plan["solver"])
