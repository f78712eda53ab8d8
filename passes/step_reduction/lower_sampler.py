"""Resolve the model's scheduler (or the one --solver names) and the step count into the per-step constants the bundle ships."""

from __future__ import annotations

from dataclasses import dataclass, field

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.step_reduction.scheduler_lowering import NAMED, SUPPORTED, lower_scheduler, resolve_scheduler


@register_pass
class LowerSampler(Pass):
    """Lower a diffusers scheduler into the sampler plan stored in the manifest.

    Before: the model's scheduler config (``scheduler/scheduler_config.json``).
    After:  ``state.sampler``: timesteps, U-Net input scales, and the
            coefficients of ``x_{i+1} = sum a_k x_{i-k} + sum b_k out_{i-k} + c z_i``,
            probed from diffusers' own ``step`` and checked against its loop
            (see ``scheduler_lowering``); the manifest records the class and config.
    Refuses (exit 4, naming it) a scheduler class or config key whose step is
    not a fixed multiply-add. The graphs are not touched.
    """

    name = "lower_sampler"
    group = "step_reduction"

    @dataclass(frozen=True)
    class Config:
        solver: str = "auto"  # auto: the model's own scheduler; or a name (ddim, dpmpp_2m, euler_a, lcm, ...) or a diffusers class
        steps: int = 20  # num_inference_steps handed to the scheduler's set_timesteps
        guidance_scale: float = 5.0  # classifier-free guidance weight (1.0 disables it)
        eta: float = 0.0  # the step's eta where it takes one (DDIM, TCD), as StableDiffusionPipeline passes it
        scheduler_config: dict = field(default_factory=dict)  # config keys set over the model's (e.g. {"clip_sample": false})

        def __post_init__(self):
            if self.solver not in NAMED and self.solver not in SUPPORTED and self.solver != "auto":
                raise ValueError(f"unknown solver {self.solver!r} (known: {', '.join(NAMED)}, or a scheduler class)")
            if self.steps < 1:
                raise ValueError(f"steps must be at least 1, got {self.steps}")
            if not isinstance(self.scheduler_config, dict):
                raise ValueError("scheduler_config must be a JSON object of scheduler config keys")

    @staticmethod
    def lower(scheduler_config: dict, config: Config):
        label, cls_name, cfg = resolve_scheduler(scheduler_config, config.solver, config.scheduler_config)
        return lower_scheduler(cls_name, cfg, config.steps, config.guidance_scale, eta=config.eta, label=label)

    def run(self, state, config: Config) -> PassResult:
        plan = self.lower(state.model.scheduler_config, config)
        cls_name = plan.scheduler["class"]
        changed = state.sampler != plan
        state.sampler = plan
        return PassResult(changed, {"solver": plan.solver, "scheduler": cls_name, "steps": plan.num_steps,
                                    "timesteps": plan.timesteps, "prediction_type": plan.prediction_type})
