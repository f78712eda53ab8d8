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


def load_bundle(path):
    """A bundle verified (every file at its sha256, nothing unlisted) and loaded in its runtimes.

    ``lgc.load_bundle("build/android-int8").generate("a photo of a cat", seed=0).images[0]`` is a PIL image;
    ``generate`` also takes ``guidance``, ``negative`` and ``count``, and reports per-component timings.
    """
    from lgc.compiler.generate import LoadedBundle

    return LoadedBundle(path)


__all__ = ["load_bundle", "lower_sampler"]
