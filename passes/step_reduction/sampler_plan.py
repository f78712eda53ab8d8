"""The sampler plan: the whole sampling loop of a bundle as per-step constants.

Every sampler lgc ships is the same linear recurrence, so an app (and lgc's
harness) implements one loop for all of them:

    x_0     = noise * init_noise_sigma
    out_i   = guided U-Net output at (x_i * input_scale[i], timesteps[i])
    x_{i+1} = sum_k x_coef[i][k] * x_{i-k} + sum_k eps_coef[i][k] * out_{i-k} + noise_coef[i] * z_i

``out_i`` is the U-Net's raw output after guidance, whatever the model
predicts (epsilon, v or the sample: ``prediction_type`` says which, the
coefficients already account for it). k = 0 is the current step, k = 1 the
one before, ...; z_i is fresh standard normal noise (ancestral and SDE
samplers, LCM), absent where ``noise_coef`` is null. ``num_steps`` is the
number of U-Net evaluations, and every per-step array has exactly that many
entries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class SamplerPlan:
    solver: str  # the name it was asked for (``--solver``), or the model's own scheduler class
    num_steps: int  # U-Net evaluations: len(timesteps)
    timesteps: list[float]
    input_scale: list[float]
    init_noise_sigma: float
    x_coef: list[list[float]]
    eps_coef: list[list[float]]
    guidance_scale: float
    prediction_type: str = "epsilon"
    noise_coef: list[float] | None = None  # per step, for z_i ~ N(0, I); None: no noise (ODE solvers)
    schedule: str = "default"  # "default": the diffusers scheduler's timesteps; "optimized": searched by lgc
    inference_steps: int | None = None  # what was passed to the scheduler's set_timesteps (Heun: 2n - 1 evaluations)
    # What the constants were lowered from: {"class": diffusers class, "config": its full config, "eta": step's eta}.
    scheduler: dict = field(default_factory=dict)

    def __post_init__(self):
        check_plan(asdict(self))

    def to_json(self) -> dict:
        return asdict(self)


def check_plan(s: dict) -> None:
    """The invariants every consumer of a plan relies on; ValueError naming the first one broken."""
    n = s["num_steps"]
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_steps must be a positive integer, got {n!r}")
    arrays = {k: s[k] for k in ("timesteps", "input_scale", "x_coef", "eps_coef")}
    if s.get("noise_coef") is not None:
        arrays["noise_coef"] = s["noise_coef"]
    for name, values in arrays.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries, num_steps is {n}")
    for name in ("x_coef", "eps_coef"):
        for i, row in enumerate(s[name]):
            if not row:
                raise ValueError(f"{name}[{i}] is empty")
    flat = [s["init_noise_sigma"], s["guidance_scale"], *s["timesteps"], *s["input_scale"], *(s.get("noise_coef") or []),
            *(c for row in s["x_coef"] + s["eps_coef"] for c in row)]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in flat):
        raise ValueError("the plan holds a value that is not a finite number")
