"""Search the N timesteps that bring an N-step sampler closest to a many-step reference (in the spirit of Align Your Steps)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lgc.compiler.errors import UsageError
from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.step_reduction.scheduler_lowering import relower, why_not_searchable

SEARCH_VERSION = 2  # part of the cache key: bump when the search, its objective or the key changes
# Searches shipped for lgc's reference model (its default solver at the step counts of the
# quality-vs-steps table), found with ``python -m lgc.compiler.reference.search_timesteps``.
# Read like the build cache, under the same keys: a search takes 5-10 minutes of eager sampling
# on a 2-core machine, and its result depends only on what the key digests. A changed model,
# solver, prompt set or search version misses them, and the search runs.
SHIPPED_SEARCHES = Path(__file__).resolve().parents[2] / "compiler" / "reference" / "timesteps"


def search_timesteps(objective: Callable[[list[int]], float], start: list[int], t_max: int,
                     steps_sizes=(64, 32, 16, 8, 4, 2, 1), max_passes: int = 3, progress=None) -> tuple[list[int], float, int]:
    """Coordinate descent on integer timesteps, kept strictly decreasing inside [0, t_max].

    For each step size, every timestep in turn tries moving up and down by it
    and keeps a move that lowers ``objective``; passes repeat while one helps.
    Returns (timesteps, objective, evaluations). Deterministic: same inputs,
    same schedule.
    """
    best = [int(round(t)) for t in start]
    best_val = objective(best)
    evals = 1
    for k, size in enumerate(steps_sizes):
        for _ in range(max_passes):
            improved = False
            for i in range(len(best)):
                for move in (size, -size):
                    cand = list(best)
                    cand[i] += move
                    hi = t_max if i == 0 else cand[i - 1] - 1
                    lo = 0 if i == len(cand) - 1 else cand[i + 1] + 1
                    if not lo <= cand[i] <= hi:
                        continue
                    val = objective(cand)
                    evals += 1
                    if val < best_val:
                        best, best_val, improved = cand, val, True
                        break
            if not improved:
                break
        if progress:
            progress(k + 1, len(steps_sizes), f"step {size}: error {best_val:.3g}")
    return best, best_val, evals


def final_latents(model, plan: dict, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """The fp32 source model's final latents for every (prompt, seed), all in one batch."""
    from lgc.calibration.collect import initial_noise
    from lgc.runtime_harness.harness import eager_batch

    runs = [(p, s) for p in prompts for s in seeds]
    noise = torch.cat([initial_noise(s, model.info["latent_shape"]) for _, s in runs])
    return eager_batch(model, plan, [p for p, _ in runs], noise, decode=False)


@register_pass
class OptimizeTimesteps(Pass):
    """Replace the solver's default timesteps by ones searched to match a many-step reference.

    Before: ``state.sampler`` at the scheduler's default (uniform) timesteps.
    After:  the same solver and step count at searched timesteps
            (``schedule: optimized`` in the manifest), constants recomputed.
    Objective: mean squared error of the final latents of the fp32 source
    model against its own ``reference_steps``-step result with the same
    solver, over a fit set of prompts and seeds (the calibration prompts,
    not the golden prompts, which stay held out for measuring it).
    Search: ``search_timesteps`` from the default schedule. The result is
    cached on disk by everything it depends on.
    Precondition: an ODE solver whose diffusers scheduler takes explicit timesteps
    and evaluates the U-Net once per timestep (``why_not_searchable``).
    With ``schedule = "default"`` (the default) the pass does nothing.
    """

    name = "optimize_timesteps"
    group = "step_reduction"

    @dataclass(frozen=True)
    class Config:
        schedule: str = "default"  # "default": keep the scheduler's timesteps; "optimized": search them
        reference_steps: int = 50  # steps of the reference the search matches
        fit_prompts: int = 6  # calibration prompts in the fit set
        fit_seeds: tuple = (2000,)  # noise seeds of the fit set (the goldens use 0 and 1)

        def __post_init__(self):
            if self.schedule not in ("default", "optimized"):
                raise ValueError(f"schedule must be 'default' or 'optimized', got {self.schedule!r}")
            if self.reference_steps < 2 or self.fit_prompts < 1 or not self.fit_seeds:
                raise ValueError("the search needs reference_steps >= 2, one prompt and one seed at least")

    def run(self, state, config: Config) -> PassResult:
        if config.schedule == "default":
            return PassResult(False, {"schedule": "default"})
        plan = state.sampler
        why = why_not_searchable(plan.to_json())
        if why:
            raise UsageError(why)
        if plan.num_steps >= config.reference_steps:
            return PassResult(False, {"schedule": "default", "why": f"{plan.num_steps} steps is not fewer than the reference's"})
        found = optimized_plan(state.model, plan, config, state.cache_dir, getattr(state, "progress_search", None))
        state.sampler = found["plan"]
        return PassResult(True, {k: v for k, v in found.items() if k != "plan"})


def fit_prompts(n: int) -> list[str]:
    from lgc.calibration.collect import DEFAULT_PROMPTS, read_prompts

    return read_prompts(DEFAULT_PROMPTS)[:n]


def search_key(model_sha: str, plan: dict, reference_steps: int, prompts: list[str], seeds: list[int]) -> str:
    """What a search's result depends on; the scheduler (class, full config, eta) is what every trial is lowered from."""
    return hashlib.sha256(json.dumps({"v": SEARCH_VERSION, "model": model_sha, "scheduler": plan["scheduler"],
                                      "steps": plan["num_steps"], "guidance": plan["guidance_scale"], "ref": reference_steps,
                                      "prompts": prompts, "seeds": seeds}, sort_keys=True).encode()).hexdigest()[:24]


def optimized_plan(model, plan, config, cache_dir: Path | None, progress=None, shipped: bool = True) -> dict:
    """Search (or read from the cache, or from the shipped searches) the optimised timesteps for ``plan``'s solver and step count."""
    base = plan.to_json()
    prompts, seeds = fit_prompts(config.fit_prompts), list(config.fit_seeds)
    key = search_key(model.sha256, base, config.reference_steps, prompts, seeds)
    path = Path(cache_dir) / f"timesteps-{key}.json" if cache_dir else None
    shipped_path = SHIPPED_SEARCHES / f"timesteps-{key}.json"
    if path is not None and path.exists():
        found = json.loads(path.read_text())
        found["cache"] = "hit"
    elif shipped and shipped_path.exists():
        found = json.loads(shipped_path.read_text())
        found["cache"] = "shipped"
    else:
        reference = final_latents(model, relower(base, steps=config.reference_steps).to_json(), prompts, seeds)

        def objective(ts: list[int]) -> float:
            trial = relower(base, timesteps=ts).to_json()
            return float(((final_latents(model, trial, prompts, seeds) - reference) ** 2).mean())

        t_max = int(base["scheduler"]["config"].get("num_train_timesteps", 1000)) - 1
        default_ts = [int(round(t)) for t in plan.timesteps]
        default_err = objective(default_ts)
        ts, err, evals = search_timesteps(objective, default_ts, t_max, progress=progress)
        found = {"schedule": "optimized", "default_timesteps": default_ts, "timesteps": ts, "fit_error_default": default_err,
                 "fit_error_optimized": err, "evaluations": evals + 1, "fit_prompts": len(prompts), "fit_seeds": seeds,
                 "reference_steps": config.reference_steps, "key": key}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(found, indent=1))
            tmp.replace(path)
        found["cache"] = "miss"
    new = relower(base, timesteps=found["timesteps"])
    new.schedule = "optimized"
    found["plan"] = new
    return found
