"""Resolve the profile's solver and step count into the per-step constants the bundle ships."""

from __future__ import annotations

from dataclasses import dataclass

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.step_reduction.solvers import SOLVERS


def default_solver(scheduler_config: dict) -> str:
    """The solver a model was distilled for: LCM models ship an LCMScheduler config; the rest get DPM-Solver++(2M)."""
    return "lcm" if scheduler_config.get("_class_name") == "LCMScheduler" else "dpmpp_2m"


@register_pass
class LowerSampler(Pass):
    """Turn (solver, steps, guidance) into the sampler plan stored in the manifest.

    Before: the model's scheduler config (noise schedule, prediction type).
    After:  ``state.sampler``: timesteps, U-Net input scales, and the
            coefficients of ``x_{i+1} = sum a_k x_{i-k} + sum b_k eps_{i-k}``.
    Preconditions: epsilon-prediction U-Net, a linear or scaled-linear beta schedule.
    The graphs are not touched.
    """

    name = "lower_sampler"
    group = "step_reduction"

    @dataclass(frozen=True)
    class Config:
        solver: str = "auto"  # one of SOLVERS (ddim, dpmpp_2m, euler, lcm) or auto: lcm for LCMScheduler models, else dpmpp_2m
        steps: int = 20  # number of U-Net evaluations
        guidance_scale: float = 5.0  # classifier-free guidance weight (1.0 disables it)

        def __post_init__(self):
            if self.solver not in SOLVERS and self.solver != "auto":
                raise ValueError(f"unknown solver {self.solver!r} (known: {', '.join(SOLVERS)})")
            if self.steps < 1:
                raise ValueError(f"steps must be at least 1, got {self.steps}")

    def run(self, state, config: Config) -> PassResult:
        pred = state.model.scheduler_config.get("prediction_type", "epsilon")
        if pred != "epsilon":
            raise ValueError(f"prediction_type '{pred}' is not supported yet (epsilon only)")
        solver = config.solver if config.solver != "auto" else default_solver(state.model.scheduler_config)
        plan = SOLVERS[solver](state.model.scheduler_config, config.steps, config.guidance_scale)
        changed = state.sampler != plan
        state.sampler = plan
        return PassResult(changed, {"solver": plan.solver, "steps": plan.num_steps, "timesteps": plan.timesteps})
