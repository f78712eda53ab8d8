"""Search the reference model's optimised timesteps and write the results lgc ships for it (``timesteps/``).

    python -m lgc.compiler.reference.search_timesteps                 # the quality-vs-steps table's step counts
    python -m lgc.compiler.reference.search_timesteps --steps 4 8     # only these

The search (``passes/step_reduction/optimize_timesteps.py``) samples the fp32
model dozens of times per step count: 5-10 minutes each on a 2-core machine.
Its result depends only on what its cache key digests (model, solver, steps,
guidance, the fit prompts and seeds, the search version), so for lgc's own
reference model it is found once and shipped: ``--schedule optimized`` builds,
``--quality-vs-steps`` and the tests read it instead of searching. A key the
shipped files do not hold (another model, a changed search) searches as before.
Run this again after retraining the reference model or bumping SEARCH_VERSION;
files whose key nothing asks for any more are left for you to delete.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    from lgc.compiler.build import DEFAULT_MODEL
    from lgc.compiler.model_import import load_pipeline
    from lgc.passes.step_reduction.optimize_timesteps import SHIPPED_SEARCHES, OptimizeTimesteps, optimized_plan
    from lgc.passes.step_reduction.scheduler_lowering import lower_scheduler, resolve_scheduler
    from lgc.runtime_harness.quality_vs_steps import DEFAULT_STEP_COUNTS
    from lgc.targets.profiles import get_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEP_COUNTS), help="step counts to search")
    args = ap.parse_args(argv)
    profile = get_profile("android-fp32")  # every profile samples with the same solver and guidance
    model = load_pipeline(DEFAULT_MODEL, profile.components, None)
    label, cls_name, cfg = resolve_scheduler(model.scheduler_config, profile.solver)
    SHIPPED_SEARCHES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:  # an empty cache and shipped=False: always search
        for n in args.steps:
            plan = lower_scheduler(cls_name, cfg, n, profile.guidance_scale, label=label)
            print(f"searching {label} x{n} ...", file=sys.stderr, flush=True)
            found = optimized_plan(model, plan, OptimizeTimesteps.Config(schedule="optimized"), Path(scratch),
                                   progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True), shipped=False)
            record = {k: v for k, v in found.items() if k not in ("plan", "cache")}
            (SHIPPED_SEARCHES / f"timesteps-{record['key']}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"  {record['timesteps']}: fit error {record['fit_error_default']:.4g} -> {record['fit_error_optimized']:.4g}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
