"""lgc's public Python API: ``import lgc``.

This folder is the ``lgc`` package itself (pyproject.toml maps it; every other
top-level folder is a subpackage: ``lgc.compiler``, ``lgc.passes``, ...).
Names here import their implementation on first use, so ``import lgc`` stays
cheap.
"""

from __future__ import annotations


def lower_sampler(scheduler_config: dict, steps: int, solver: str | None = None, guidance_scale: float = 1.0) -> dict:
    """The manifest's ``sampler`` section for a diffusers scheduler config, without a build.

    ``scheduler_config`` is a model folder's ``scheduler/scheduler_config.json`` (its ``_class_name``
    picks the scheduler unless ``solver`` names one: ``ddim``, ``dpmpp_2m``, ``euler_a``, ... or a
    diffusers scheduler class). The constants are diffusers' own, probed from its ``step`` and checked
    against its loop; a scheduler or key lgc cannot reproduce exactly raises ``UnsupportedModelError``.
    """
    from lgc.passes.step_reduction.scheduler_lowering import lower_sampler as lower

    return lower(scheduler_config, steps, solver=solver, guidance_scale=guidance_scale)


class Built:
    """What ``lgc.build`` made: the bundle folder and its report (the figures ``report.json`` holds)."""

    def __init__(self, path, report: dict):
        self.path, self.report = path, report

    def __repr__(self) -> str:
        e2e = self.report.get("end_to_end", {})
        return f"Built({str(self.path)!r}, psnr_db_min={e2e.get('psnr_db_min')}, ssim_min={e2e.get('ssim_min')})"


def build(model=None, target: str = "android-int8", out="build", *, steps: int | None = None, solver: str | None = None,
          schedule: str | None = None, guidance: float | None = None, image_size: int | None = None, golden=None,
          cache_dir=None, calibration_prompts=None, explain: bool = False, min_psnr: float | None = None,
          quality_vs_steps: tuple[int, ...] = (), settings: tuple[str, ...] | list[str] = (), tune_trials: int | None = None,
          tuning_records: bool = True, allow_pickle: bool = False, ui=None) -> Built:
    """``lgc build``: a diffusers folder (default: lgc's reference model) to a checked bundle in ``out/<target>``.

    Every keyword is the CLI flag of the same name (``settings`` is ``--set PASS.OPTION=VALUE``, repeated).
    Raises ``lgc.compiler.errors.LgcError`` subclasses (each with the CLI's ``exit_code``) on bad input
    or an unsupported model; the previous bundle is left untouched then. Quiet unless ``ui`` is given
    (``lgc.compiler.ui.UI()`` shows the CLI's progress).
    """
    from pathlib import Path

    from lgc.compiler.build import build as run_build
    from lgc.compiler.errors import UsageError
    from lgc.compiler.ui import UI
    from lgc.targets.profiles import get_profile

    if min_psnr is not None and "search_mixed_precision" not in get_profile(target).pipeline():
        raise UsageError(f"--min-psnr picks which layers stay out of int8; {target} does not quantize to int8 (try android-int8)")
    options = list(settings)
    options += [f"calibrate_observers.prompts_file={calibration_prompts}"] if calibration_prompts else []
    options += ["analyze_sensitivity.enabled=true"] if explain else []
    options += [f"search_mixed_precision.min_psnr_db={min_psnr}"] if min_psnr is not None else []
    report = run_build(model, target, Path(out), ui or UI(quiet=True), cache_dir=cache_dir, golden_dir=golden,
                       overrides={"steps": steps, "solver": solver, "guidance_scale": guidance, "image_size": image_size,
                                  "schedule": schedule},
                       emit_options={"tuning_trials": tune_trials, "tuning_records": None if tuning_records else False},
                       quality_steps=tuple(quality_vs_steps), allow_pickle=allow_pickle, settings=options)
    return Built(Path(out) / get_profile(target).name, report)


def load_bundle(path):
    """A bundle verified (every file at its sha256, nothing unlisted) and loaded in its runtimes.

    ``lgc.load_bundle("build/android-int8").generate("a photo of a cat", seed=0).images[0]`` is a PIL image;
    ``generate`` also takes ``guidance``, ``negative`` and ``count``, and reports per-component timings.
    """
    from lgc.compiler.generate import LoadedBundle

    return LoadedBundle(path)


__all__ = ["Built", "build", "load_bundle", "lower_sampler"]
