"""Samplers resolved into per-step constants: the whole loop as multiply-adds.

Every solver here is written as the same linear recurrence, so an app (and
lgc's harness) implements one loop for all of them:

    x_0     = noise * init_noise_sigma
    eps_i   = guided U-Net output at (x_i * input_scale[i], timesteps[i])
    x_{i+1} = sum_k x_coef[i][k] * x_{i-k} + sum_k eps_coef[i][k] * eps_{i-k} + noise_coef[i] * z_i

(k = 0 is the current step, k = 1 the one before, ...; z_i is fresh standard
normal noise, used only by LCM's multistep sampling, zero for the ODE
solvers). The coefficients are derived here from the noise schedule with the
solvers' published formulas; the diffusers schedulers are used only to pick
the same default timesteps, and the tests replay these constants against
diffusers' own ``step``. Every solver also accepts explicit timesteps (the
optimised schedules of ``optimize_timesteps``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SamplerPlan:
    solver: str
    num_steps: int
    timesteps: list[float]
    input_scale: list[float]
    init_noise_sigma: float
    x_coef: list[list[float]]
    eps_coef: list[list[float]]
    guidance_scale: float
    prediction_type: str = "epsilon"
    noise_coef: list[float] | None = None  # per step, for z_i ~ N(0, I); None: no noise (ODE solvers)
    schedule: str = "default"  # "default": the diffusers scheduler's timesteps; "optimized": searched by lgc

    def to_json(self) -> dict:
        return asdict(self)


def _alphas_cumprod(cfg: dict) -> np.ndarray:
    n = cfg.get("num_train_timesteps", 1000)
    b0, b1 = cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02)
    kind = cfg.get("beta_schedule", "linear")
    if kind == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2
    elif kind == "linear":
        betas = np.linspace(b0, b1, n, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule '{kind}' is not supported (linear, scaled_linear)")
    return np.cumprod(1.0 - betas)


def _timesteps(scheduler_cls, cfg: dict, steps: int) -> np.ndarray:
    """The timesteps diffusers' scheduler of that class visits for ``steps`` steps."""
    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    sched = scheduler_cls.from_config(keep)
    sched.set_timesteps(steps)
    return sched.timesteps.numpy().astype(np.float64)


def _given(timesteps, steps: int) -> np.ndarray:
    ts = np.asarray(timesteps, dtype=np.float64)
    if len(ts) != steps or np.any(np.diff(ts) >= 0) or ts.min() < 0:
        raise ValueError(f"timesteps must be {steps} distinct values, decreasing and non-negative, got {list(timesteps)}")
    return ts


def ddim(cfg: dict, steps: int, guidance_scale: float, timesteps=None) -> SamplerPlan:
    """DDIM, eta = 0: x_prev = a_prev * x0_pred + s_prev * eps."""
    from diffusers import DDIMScheduler

    ac = _alphas_cumprod(cfg)
    ts = _timesteps(DDIMScheduler, cfg, steps) if timesteps is None else _given(timesteps, steps)
    final = 1.0 if cfg.get("set_alpha_to_one", True) else ac[0]
    x_coef, eps_coef = [], []
    for i, t in enumerate(ts):
        a_t = ac[int(t)]
        a_p = ac[int(ts[i + 1])] if i + 1 < len(ts) else final
        cx = math.sqrt(a_p / a_t)
        ce = math.sqrt(1 - a_p) - math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t)
        x_coef.append([cx])
        eps_coef.append([ce])
    return SamplerPlan("ddim", steps, ts.tolist(), [1.0] * steps, 1.0, x_coef, eps_coef, guidance_scale)


def euler(cfg: dict, steps: int, guidance_scale: float, timesteps=None) -> SamplerPlan:
    """Euler (Karras et al. 2022, Alg. 2 without churn) in sigma space."""
    from diffusers import EulerDiscreteScheduler

    ac = _alphas_cumprod(cfg)
    sched_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    sched = EulerDiscreteScheduler.from_config(sched_cfg)
    sched.set_timesteps(steps)
    ts = sched.timesteps.numpy().astype(np.float64) if timesteps is None else _given(timesteps, steps)
    # Sigmas at (possibly fractional) timesteps, interpolated as diffusers does.
    all_sigmas = np.sqrt((1 - ac) / ac)
    sig = list(np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)) + [0.0]
    # diffusers' convention: the initial noise is scaled by sigma_max for
    # "linspace"/"trailing" spacing and by sqrt(sigma_max^2 + 1) otherwise.
    top = float(max(sig))
    init = top if sched.config.timestep_spacing in ("linspace", "trailing") else math.sqrt(top**2 + 1)
    x_coef = [[1.0] for _ in ts]
    eps_coef = [[sig[i + 1] - sig[i]] for i in range(steps)]
    scale = [1.0 / math.sqrt(s**2 + 1) for s in sig[:-1]]
    return SamplerPlan("euler", steps, ts.tolist(), scale, init, x_coef, eps_coef, guidance_scale)


def dpmpp_2m(cfg: dict, steps: int, guidance_scale: float, timesteps=None) -> SamplerPlan:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, midpoint, final step first order to sigma 0."""
    from diffusers import DPMSolverMultistepScheduler

    ac = _alphas_cumprod(cfg)
    ts = _timesteps(DPMSolverMultistepScheduler, cfg, steps) if timesteps is None else _given(timesteps, steps)
    alpha = [math.sqrt(ac[int(t)]) for t in ts] + [1.0]
    sigma = [math.sqrt(1 - ac[int(t)]) for t in ts] + [0.0]
    x_coef, eps_coef = [], []
    for i in range(steps):
        a_s, s_s, a_t, s_t = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        # data prediction m_i = x_i / a_i - (s_i / a_i) eps_i
        if s_t == 0.0:
            # Final step to sigma 0: x = m_i (first order; exp(-h) = 0).
            x_coef.append([1 / a_s])
            eps_coef.append([-s_s / a_s])
            continue
        lam = lambda a, s: math.log(a) - math.log(s)  # noqa: E731
        h = lam(a_t, s_t) - lam(a_s, s_s)
        big_a = a_t * (1 - math.exp(-h))
        if i == 0:
            # First order (DPM-Solver++ 1 = DDIM) on the first step: no history yet.
            cm = [big_a]
            cx0 = s_t / s_s
            x_coef.append([cx0 + cm[0] / a_s])
            eps_coef.append([-cm[0] * s_s / a_s])
            continue
        a_p, s_p = alpha[i - 1], sigma[i - 1]
        r0 = (lam(a_s, s_s) - lam(a_p, s_p)) / h
        c0 = big_a * (1 + 0.5 / r0)
        c1 = -big_a * 0.5 / r0
        x_coef.append([s_t / s_s + c0 / a_s, c1 / a_p])
        eps_coef.append([-c0 * s_s / a_s, -c1 * s_p / a_p])
    return SamplerPlan("dpmpp_2m", steps, ts.tolist(), [1.0] * steps, 1.0, x_coef, eps_coef, guidance_scale)


def lcm(cfg: dict, steps: int, guidance_scale: float, timesteps=None) -> SamplerPlan:
    """LCM multistep sampling (Luo et al. 2023) for consistency-distilled U-Nets.

    Each step predicts x0 = (x - s_t eps) / a_t, applies the consistency
    boundary condition denoised = c_out x0 + c_skip x, then (except on the last
    step) re-noises to the next timestep: x' = a_prev denoised + s_prev z.
    Guidance is the U-Net's own (a guidance-embedding input), not CFG.
    """
    from diffusers import LCMScheduler

    ac = _alphas_cumprod(cfg)
    ts = _timesteps(LCMScheduler, cfg, steps) if timesteps is None else _given(timesteps, steps)
    sigma_data, scaling = 0.5, float(cfg.get("timestep_scaling", 10.0))
    x_coef, eps_coef, noise_coef = [], [], []
    for i, t in enumerate(ts):
        a_t, s_t = math.sqrt(ac[int(t)]), math.sqrt(1 - ac[int(t)])
        c_skip = sigma_data**2 / ((t * scaling) ** 2 + sigma_data**2)
        c_out = (t * scaling) / math.sqrt((t * scaling) ** 2 + sigma_data**2)
        # denoised = (c_out / a_t + c_skip) x - (c_out s_t / a_t) eps
        dx, de = c_out / a_t + c_skip, -c_out * s_t / a_t
        if i + 1 < len(ts):
            a_p, s_p = math.sqrt(ac[int(ts[i + 1])]), math.sqrt(1 - ac[int(ts[i + 1])])
        else:
            a_p, s_p = 1.0, 0.0  # the last step returns the denoised sample itself
        x_coef.append([a_p * dx])
        eps_coef.append([a_p * de])
        noise_coef.append(s_p)
    return SamplerPlan("lcm", steps, ts.tolist(), [1.0] * steps, 1.0, x_coef, eps_coef, guidance_scale, noise_coef=noise_coef)


SOLVERS = {"ddim": ddim, "dpmpp_2m": dpmpp_2m, "euler": euler, "lcm": lcm}
