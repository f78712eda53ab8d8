"""The ``lgc`` command line: build, check, golden, passes, targets.

Every failure is one line on stderr (``lgc: error: ...``) and an exit code
that says what kind of failure it was (see ``lgc.compiler.errors`` and the
README); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lgc.compiler.errors import LgcError, UsageError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 5


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other usage error
        raise UsageError(message)


def cmd_build(a) -> int:
    import lgc
    from lgc.compiler.ui import UI

    ui = UI(quiet=a.quiet)
    built = lgc.build(a.model, a.target, a.out, steps=a.steps, solver=a.solver, schedule=a.schedule, guidance=a.guidance,
                      image_size=a.image_size, golden=a.golden, cache_dir=a.cache_dir, calibration_prompts=a.calibration_prompts,
                      explain=a.explain, min_psnr=a.min_psnr, quality_vs_steps=_step_counts(a.quality_vs_steps), settings=a.set,
                      tune_trials=a.tune_trials, tuning_records=not a.no_tuning_records, allow_pickle=a.allow_pickle, ui=ui)
    ui.summary(built.report)
    return 0


def _step_counts(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    from lgc.runtime_harness.quality_vs_steps import DEFAULT_STEP_COUNTS

    if text == "":
        return DEFAULT_STEP_COUNTS
    try:
        counts = tuple(sorted({int(s) for s in text.split(",")}))
    except ValueError:
        raise UsageError(f"--quality-vs-steps takes step counts like 4,8,20, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise UsageError(f"--quality-vs-steps: step counts must be at least 1, got {text!r}")
    return counts


def cmd_check(a) -> int:
    from lgc.compiler.check import check
    from lgc.compiler.ui import UI

    check(a.bundle, golden_dir=a.golden, policy_path=a.policy, baseline=a.baseline, junit=a.junit, html=a.html,
          json_out=a.json, ui=UI(quiet=a.quiet))
    return 0


def cmd_generate(a) -> int:
    from lgc.compiler.generate import LoadedBundle, output_paths, save_all
    from lgc.compiler.ui import UI

    ui = UI(quiet=a.quiet)
    paths = output_paths(a.out, a.n)  # a bad -o fails before minutes of loading
    ui.step(f"verifying and loading {a.bundle}")
    bundle = LoadedBundle(a.bundle)
    for name, runtime in bundle.runtimes.items():
        ui.step(f"{name}: {bundle.manifest['components'][name]['file']} in {runtime}")
    result = bundle.generate(a.prompt, seed=a.seed, guidance=a.guidance, negative=a.negative, count=a.n,
                             progress=ui.counter("denoising"))
    save_all(result.images, paths)
    for name, ms in result.timings_ms.items():
        ui.step(f"{name}: {result.calls[name]} call(s), {ms:.1f} ms in all")
    for path, seed in zip(paths, result.seeds):
        ui.step(f"wrote {path} (seed {seed})")
    return 0


def cmd_golden(a) -> int:
    from lgc.compiler.build import DEFAULT_MODEL
    from lgc.compiler.golden import generate_goldens
    from lgc.compiler.ui import UI
    from lgc.runtime_harness.golden import GOLDEN_ROOT

    ui = UI(quiet=a.quiet)
    if a.model:
        sets = [(Path(a.model), a.name or f"{Path(a.model).name}", a.steps)]
    else:  # the reference models' goldens, and the student's 50-step reference for quality vs steps
        sets = [(DEFAULT_MODEL, "reference-student", a.steps), (DEFAULT_MODEL.parent / "teacher", "reference-teacher", a.steps),
                (DEFAULT_MODEL, "reference-student-50", 50)]
    for m, name, steps in sets:
        out = Path(a.out) / name if a.out else GOLDEN_ROOT / name
        ui.step(f"goldens of {m} ({steps} steps) -> {out}")
        generate_goldens(m, out, name, steps=steps, progress=ui.counter(f"golden {name}"))
    return 0


def _console():
    from rich.console import Console

    # Piped output (CI logs, grep) gets wide tables instead of truncated cells.
    return Console() if sys.stdout.isatty() else Console(width=220)


def cmd_passes(a) -> int:
    from rich.table import Table

    from lgc.compiler.pass_manager import registered_passes
    from lgc.targets.profiles import SHARED_PIPELINE

    t = Table(title="lgc passes (in pipeline order)")
    for col in ("#", "pass", "group", "what it does", "options"):
        t.add_column(col)
    reg = registered_passes()
    order = list(SHARED_PIPELINE) + sorted(set(reg) - set(SHARED_PIPELINE))
    for i, name in enumerate(order):
        cls = reg[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config))
        t.add_row(str(i + 1) if name in SHARED_PIPELINE else "-", name, cls.group, doc, opts)
    _console().print(t)
    return 0


def cmd_targets(a) -> int:
    from rich.table import Table

    from lgc.targets.profiles import PROFILES

    t = Table(title="lgc targets")
    for col in ("target", "runtime", "precision", "sampler", "passes", "description"):
        t.add_column(col)
    for p in PROFILES.values():
        t.add_row(p.name, p.runtime, p.precision, f"{p.solver} x{p.steps}, cfg {p.guidance_scale}", " → ".join(p.pipeline()), p.description)
    _console().print(t)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lgc", description="Compile distilled latent-diffusion models into phone-ready bundles.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="compile a diffusers folder into build/<target>/")
    b.add_argument("--target", required=True, help="build profile (see `lgc targets`)")
    b.add_argument("--model", type=Path, default=None, help="diffusers pipeline folder (default: lgc's reference model)")
    b.add_argument("--allow-pickle", action="store_true",
                   help="load pickle weights (*.bin) from a model folder you trust (default: safetensors only)")
    b.add_argument("--out", type=Path, default=Path("build"), help="output root; the bundle goes to OUT/<target>")
    b.add_argument("--steps", type=int, default=None, help="sampler steps (default: the profile's)")
    b.add_argument("--solver", default=None, help="sampler (default: the model's own scheduler, lowered from diffusers): "
                   "ddim, ddpm, pndm, lms, euler, euler_a, heun, kdpm2, kdpm2_a, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, dpmpp_2s, "
                   "deis, unipc, lcm, tcd, or a diffusers scheduler class name")
    b.add_argument("--schedule", default=None, choices=("default", "optimized"),
                   help="timesteps: the scheduler's default ones, or searched to match a 50-step reference (cached)")
    b.add_argument("--quality-vs-steps", nargs="?", const="", default=None, metavar="N,N,...",
                   help="also measure quality against a 50-step reference for these step counts (default 4,6,8,10,15,20), "
                        "default and optimized timesteps, fp32 model and artifacts")
    b.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    b.add_argument("--image-size", type=int, default=None, help="square image size in pixels (default: the model's)")
    b.add_argument("--golden", type=Path, default=None, help="golden folder to check against (default: found by model hash)")
    b.add_argument("--cache-dir", type=Path, default=None, help="calibration cache (default: OUT/.cache)")
    b.add_argument("--calibration-prompts", default=None, metavar="FILE",
                   help="calibration prompts, one a line (default: lgc's bundled set)")
    b.add_argument("--explain", action="store_true",
                   help="rank the U-Net's conv/linear layers by the error each adds alone in int8 (report.json: sensitivity)")
    b.add_argument("--min-psnr", type=float, default=None, metavar="DB",
                   help="end-to-end PSNR budget: keep the fewest, most sensitive U-Net layers in fp32 until it holds "
                        "(at most 10%% of its MACs; report.json: mixed_precision)")
    b.add_argument("--set", action="append", default=[], metavar="PASS.OPTION=VALUE",
                   help="set a pass option (VALUE in JSON), e.g. --set annotate_xnnpack_w8a8.per_channel=false; repeatable")
    b.add_argument("--tune-trials", type=int, default=None, metavar="N",
                   help="TVM targets: MetaSchedule trials for each kernel without a tuning record (about 13 s a kernel at 16 trials "
                        "on 2 cores; records are kept in the cache and reused; default 0: apply the records there are)")
    b.add_argument("--no-tuning-records", action="store_true",
                   help="TVM targets: compile every kernel untuned, ignoring tuning records (the fallback)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(fn=cmd_build)

    c = sub.add_parser("check", help="run a built bundle against the goldens and a tolerance policy (CI gate)",
                       description="Exit 0: every check holds; 1: a check failed (each one named); 2: bad input "
                                   "(missing bundle, altered file, bad policy or baseline).")
    c.add_argument("bundle", type=Path, help="bundle folder, e.g. build/android-int8")
    c.add_argument("--golden", type=Path, default=None, help="golden folder (default: found by the model hash in the manifest)")
    c.add_argument("--policy", type=Path, default=None, help="tolerance policy TOML (default: lgc's, runtime_harness/policy.default.toml)")
    c.add_argument("--baseline", type=Path, default=None, help="an earlier report.json or check JSON to compare with")
    c.add_argument("--junit", type=Path, default=None, help="write JUnit XML here (one test case per check)")
    c.add_argument("--html", type=Path, default=None, help="write a self-contained HTML report here")
    c.add_argument("--json", type=Path, default=None, help="write the figures and checks as JSON here")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(fn=cmd_check)

    gen = sub.add_parser("generate", help="images from a bundle: verify it, then run its loop in the artifacts' runtimes")
    gen.add_argument("bundle", type=Path, help="a folder lgc build wrote (build/<target>)")
    gen.add_argument("prompt")
    gen.add_argument("--seed", type=int, default=0, help="initial-noise seed; image k of -n uses seed + k (default 0)")
    gen.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the bundle's)")
    gen.add_argument("--negative", default="", help="negative prompt (classifier-free-guidance bundles)")
    gen.add_argument("-n", type=int, default=1, help="how many images (default 1)")
    gen.add_argument("-o", "--out", type=Path, default=Path("out.png"), help="PNG to write; with -n, STEM-K.png beside it")
    gen.add_argument("--quiet", action="store_true")
    gen.set_defaults(fn=cmd_generate)

    g = sub.add_parser("golden", help="regenerate fp16 golden outputs of a model (default: the reference models)")
    g.add_argument("--model", type=Path, default=None)
    g.add_argument("--name", default=None)
    g.add_argument("--out", type=Path, default=None, help="parent folder (default: golden_outputs/)")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(fn=cmd_golden)

    sub.add_parser("passes", help="list the registered passes").set_defaults(fn=cmd_passes)
    sub.add_parser("targets", help="list the build profiles").set_defaults(fn=cmd_targets)
    return ap


def _quiet_dependency_logs() -> None:
    """Keep dependencies' import-time chatter out of users' CI logs (lgc's own output is unaffected).

    torchao logs a warning for each optional CUDA kernel library it cannot load
    on a CPU machine, and torch's pytree warns about an enum registration done
    inside torchao; neither concerns a user of lgc. coremltools warns that
    its macOS-only runtime proxies are missing and that this torch is newer
    than it was tested with; ExecuTorch's Core ML backend warns about spec
    versions lgc sets on purpose. Their tqdm bars (MIL passes, weight loading)
    would interleave with lgc's own progress lines.
    """
    import logging
    import os
    import warnings

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("ET_COREML_LOG_LEVEL", "ERROR")  # its loggers set their own levels from this
    # diffusers and transformers set their loggers' levels from these when first imported: notices such
    # as "accelerate was not found" or a config key they ignore are nothing an lgc user can act on.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # torch.export's pytree, deprecated inside torch itself: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    for name in ("torchao", "torch.utils._pytree", "coremltools", "executorch.backends.apple.coreml"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _terminate(signum, frame):
    # SIGTERM takes the same path as Ctrl-C: staged output is removed, the old bundle kept.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    import signal

    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    _quiet_dependency_logs()
    debug = "--debug" in argv
    try:
        a = parser().parse_args(argv)
        return a.fn(a)
    except LgcError as e:
        if debug:
            raise
        print(f"lgc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lgc: interrupted; no bundle was changed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # an lgc bug or a dependency failure lgc did not anticipate
        if debug:
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"lgc: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
