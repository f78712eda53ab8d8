"""``lgc build``: model folder -> components -> passes -> artifacts -> bundle -> harness report."""

from __future__ import annotations

import importlib.metadata
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import lgc.compiler.reference as reference
from lgc.compiler import manifest as manifest_mod
from lgc.compiler.artifact_cache import ArtifactCache, component_key
from lgc.compiler.bundle import bundle_file_names, bundle_files, is_disk_full, sha256_file, size_bytes, staged_bundle, write_json
from lgc.compiler.errors import BuildError, LgcError, UnsupportedModelError
from lgc.compiler.golden import pinned_steps
from lgc.compiler.model_import import ImportedModel, load_pipeline
from lgc.compiler.node_provenance import shared_node_provenance
from lgc.compiler.pass_manager import PassManager, resolve_pipeline
from lgc.compiler.stages import StageClock
from lgc.passes.step_reduction.sampler_plan import SamplerPlan
from lgc.targets import EMITTERS, KEY_MATERIAL, RUNNERS
from lgc.targets.executorch.emit import DELEGATION_FIELDS
from lgc.targets.profiles import TWIN_SHARED_EMIT_OPTIONS, Profile, get_profile

# One version source: pyproject.toml, as installed (editable or not).
LGC_VERSION = importlib.metadata.version("lgc")
REFERENCE_STEPS = 50  # the many-step reference the quality-vs-steps table is measured against
# --min-psnr: lowerings tried at most (each re-lowers the U-Net), when the goldens disagree with the search's cases.
BUDGET_ATTEMPTS = 4
DEFAULT_MODEL = Path(reference.__file__).resolve().parent / "student"


@dataclass
class BuildState:
    """What passes read and change: the profile, the model's components, the sampler plan."""

    profile: Profile
    model: ImportedModel
    sampler: SamplerPlan | None = None
    cache_dir: Path | None = None
    progress_calibration: object = None
    progress_search: object = None


def model_name(path: Path) -> str:
    path = Path(path).resolve()
    if path.parent == DEFAULT_MODEL.parent:
        return f"lgc-reference/{path.name}"
    return path.name


def export_components(model: ImportedModel, names: tuple[str, ...] | None = None) -> None:
    """Capture each component (or those in ``names``) with torch.export at its static shapes."""
    for name, comp in model.components.items():
        if names is not None and name not in names:
            continue
        comp.restore_source_signature()  # a --min-psnr retry captures again what an earlier attempt's passes changed
        try:
            ep = torch.export.export(comp.module, comp.example_inputs, strict=False)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsupportedModelError(f"{name}: torch.export cannot capture this {comp.source_class}: {first[:300]}") from e
        comp.graph = ep.module()


def build_manifest(profile: Profile, model: ImportedModel, state: BuildState, entries: dict) -> dict:
    tok = model.tokenizer
    info = model.info
    size = info["image_size"]
    from lgc.calibration.collect import guidance_plan

    return {
        "schema_version": manifest_mod.SCHEMA_VERSION,
        "lgc_version": LGC_VERSION,
        "target": profile.name,
        "profile": {k: v for k, v in asdict(profile).items() if k != "description"},
        "model": {"name": model_name(model.path), "sha256": model.sha256, "classes": info["classes"]},
        "image": {"height": size, "width": size, "layout": "NCHW", "range": [0.0, 1.0]},
        "latent": {"shape": [1, *info["latent_shape"]], "scaling_factor": info["latent_scaling_factor"],
                   "note": "the vae_decoder divides by scaling_factor itself: feed it the sampler's latents"},
        "tokenizer": {"folder": "tokenizer", "max_length": info["text_max_length"], "bos_id": tok.bos_token_id,
                      "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id, "uncond_prompt": ""},
        "guidance": {
            **guidance_plan(info, profile.guidance_scale),
            "note": "cfg_batch: unet batch = [uncond, cond]; eps = uncond + scale * (cond - uncond)",
        },
        "sampler": state.sampler.to_json(),
        "components": entries,
    }


def _goldens_for(model: ImportedModel, sampler: dict, golden_dir: Path | None):
    from lgc.compiler.golden import GOLDEN_PROMPTS
    from lgc.runtime_harness.golden import find_goldens, read_golden_dir

    folder = golden_dir or find_goldens(model.sha256)
    if folder is not None:
        goldens = read_golden_dir(Path(folder))
        # Goldens of another image size cannot be compared pixel for pixel.
        if goldens.manifest.get("image_size") == model.info["image_size"]:
            return goldens
    from lgc.runtime_harness.harness import eager_reference

    return eager_reference(model, sampler, GOLDEN_PROMPTS[:4], [0], pinned_steps(sampler["num_steps"]))


def _quality_vs_steps(model: ImportedModel, bundle: Path, manifest: dict, step_counts, cache_dir: Path, ui) -> dict:
    """The quality-vs-steps table against the model's 50-step goldens (or an eager 50-step reference without them)."""
    from lgc.compiler.golden import GOLDEN_PROMPTS
    from lgc.passes.step_reduction.scheduler_lowering import relower
    from lgc.runtime_harness.golden import find_goldens, read_golden_dir
    from lgc.runtime_harness.harness import eager_reference, open_bundle
    from lgc.runtime_harness.quality_vs_steps import quality_vs_steps

    folder = find_goldens(model.sha256, steps=REFERENCE_STEPS)
    goldens = read_golden_dir(folder) if folder else None
    if goldens is None or goldens.manifest.get("image_size") != model.info["image_size"]:
        s = manifest["sampler"]
        plan = relower(s, steps=REFERENCE_STEPS).to_json()
        goldens = eager_reference(model, plan, GOLDEN_PROMPTS[:4], [0, 1], [])
    fns, tokenizer = open_bundle(bundle, manifest)
    return quality_vs_steps(model, fns, tokenizer, manifest, goldens, step_counts, cache_dir, progress=ui.step)


def _quantization_findings(pass_reports: list[dict], end_to_end: dict) -> dict:
    """The sensitivity ranking (--explain) and the mixed-precision choice (--min-psnr), with whether the bundle met the budget."""
    out = {}
    for p in pass_reports:
        d = p.get("details", {})
        if p["pass"] == "analyze_sensitivity" and d.get("enabled"):
            out["sensitivity"] = d["layers"]
        if p["pass"] == "search_mixed_precision" and d.get("enabled"):
            out["mixed_precision"] = {k: v for k, v in d.items() if k != "enabled"}
            out["mixed_precision"]["met"] = end_to_end["psnr_db_min"] >= d["budget_db"]
    return out


def lower_component(comp, profile: Profile, dest: Path, cache: ArtifactCache, step, note: str = "", progress=None) -> dict:
    """One component's artifact in ``dest``: from the artifact cache, or emitted (and then cached)."""
    material = KEY_MATERIAL.get(profile.runtime)

    def key() -> str:
        return component_key(comp, profile, LGC_VERSION, material(profile, cache.workspace) if material else None)

    try:
        k = key()
        art = cache.get(k, dest)
        if art is not None:
            step(f"lowering {comp.name}{note}: cached (graph and weights unchanged, key {k[:12]})")
            art["cached"] = True
            return art
        step(f"lowering {comp.name} ({profile.runtime}, {profile.precision}){note}")
        with shared_node_provenance():  # lowering retraces the graph dozens of times; see node_provenance
            art = EMITTERS[profile.runtime](comp, dest, profile, cache.workspace, progress)
        # Keyed by what the artifact was made from: tuning may have added records while emitting.
        cache.put(key(), dest, art)
        art["cached"] = False
        return art
    except LgcError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise  # staged_bundle reports it, after removing the partial bundle
        raise BuildError(f"lowering {comp.name} to {profile.runtime} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def _emit_bundle(profile: Profile, model: ImportedModel, state: BuildState, stage: Path, cache_dir: Path,
                 pass_reports: list[dict], stages, counter) -> tuple[dict, dict, dict, Path | None]:
    """Lower every component into ``stage`` (and its verification twin, if the profile has one); write passes.json."""
    cache = ArtifactCache(cache_dir)
    entries, artifacts = {}, {}
    for name, comp in model.components.items():
        art = lower_component(comp, profile, stage, cache, stages.step, progress=counter(f"tuning {name}"))
        path = stage / art["file"]
        with torch.no_grad():
            out_example = comp.module(*(comp.source_inputs or comp.example_inputs))
        entries[name] = manifest_mod.component_entry(comp, art, sha256_file(path), size_bytes(path),
                                                     RUNNERS[profile.runtime], profile.precision, out_example)
        artifacts[name] = art
    manifest = build_manifest(profile, model, state, entries)
    # Every file the bundle ships (artifacts, tokenizer) under its hash: checked before anything of it runs.
    manifest["files"] = bundle_files(stage)
    manifest_mod.validate(manifest)
    write_json(stage / "passes.json", {"pipeline": profile.pipeline(), "passes": pass_reports,
                                       "artifacts": {n: a for n, a in artifacts.items()}})
    twin = None
    if profile.verify_with:
        # This machine cannot run the bundle's own code: run the same graphs emitted for it instead.
        # Same tuning budget: the twin is meant to make the same schedule decisions.
        twin_profile = get_profile(profile.verify_with).with_emit_options(
            **{k: v for k, v in profile.emit_options.items() if k in TWIN_SHARED_EMIT_OPTIONS})
        twin = Path(cache_dir) / "twins" / profile.name
        shutil.rmtree(twin, ignore_errors=True)
        twin.mkdir(parents=True)
        for name, comp in model.components.items():
            lower_component(comp, twin_profile, twin, cache, stages.step, note=f" (verification twin: {twin_profile.name})")
        manifest["verified_with"] = {"target": twin_profile.name, "note": "same graphs after the same passes; only code generation differs"}
    return entries, artifacts, manifest, twin


def _budget_retry(pass_reports: list[dict], end_to_end: dict) -> int | None:
    """With --min-psnr, the fallback size to search from when the bundle missed the budget (None: met, off, or nothing left)."""
    for p in pass_reports:
        d = p.get("details", {})
        if p["pass"] == "search_mixed_precision" and d.get("enabled") and end_to_end["psnr_db_min"] < d["budget_db"]:
            return d.get("next_fallback")
    return None


def build(model_path: Path | None, target: str, out_root: Path, ui, overrides: dict | None = None,
          cache_dir: Path | None = None, golden_dir: Path | None = None, settings: list[str] | None = None,
          quality_steps: tuple[int, ...] = (), emit_options: dict | None = None, allow_pickle: bool = False) -> dict:
    profile = (get_profile(target).with_overrides(**(overrides or {})).with_pass_options(settings or [])
               .with_emit_options(**(emit_options or {})))
    # Resolve the whole pipeline before any work: an unknown pass or option fails here.
    planned = resolve_pipeline(profile.pipeline(), profile.options())
    model_path = Path(model_path) if model_path else DEFAULT_MODEL
    out = Path(out_root) / profile.name
    cache_dir = cache_dir or Path(out_root) / ".cache"
    with staged_bundle(out) as stage:
        stages = StageClock(ui.step)
        stages.step(f"importing {model_path}")
        model = load_pipeline(model_path, profile.components, profile.image_size, allow_pickle=allow_pickle)
        for p in planned:  # a scheduler lgc refuses is refused now, not after minutes of export
            if p.cls.name == "lower_sampler":
                p.cls.lower(model.scheduler_config, p.config)
        # Saved before anything tokenizes: a fast tokenizer that has padded or truncated keeps those
        # settings in tokenizer.json, so the file would depend on whether calibration ran or was cached.
        model.tokenizer.save_pretrained(stage / "tokenizer")
        from lgc.runtime_harness.harness import run_bundle

        goldens = None
        for attempt in range(1, BUDGET_ATTEMPTS + 1):
            stages.step(f"exporting {', '.join(model.components)} at image size {model.info['image_size']}")
            export_components(model)
            state = BuildState(profile, model, cache_dir=cache_dir, progress_calibration=ui.counter("calibration"),
                               progress_search=ui.counter("timestep search"))
            pass_reports = PassManager(planned, progress=stages.step).run(state)
            entries, artifacts, manifest, twin = _emit_bundle(profile, model, state, stage, cache_dir, pass_reports, stages,
                                                              ui.counter)
            stages.step("running the bundle end to end in its runtime" + (f" (through its {profile.verify_with} twin)" if twin else ""))
            goldens = goldens or _goldens_for(model, manifest["sampler"], golden_dir)
            figures = run_bundle(stage, manifest, goldens, progress=ui.step, artifacts=twin)
            retry = _budget_retry(pass_reports, figures["end_to_end"])
            if retry is None or attempt == BUDGET_ATTEMPTS:
                break
            # The search's own cases said the budget held, the goldens say it does not: search on from more fp32 layers.
            stages.step(f"--min-psnr: the bundle's end-to-end PSNR min is {figures['end_to_end']['psnr_db_min']} dB, "
                        f"under the budget; searching again from {retry} fp32 layers (attempt {attempt + 1}/{BUDGET_ATTEMPTS})")
            profile = profile.with_pass_options([f"search_mixed_precision.min_fallback={retry}"])
            planned = resolve_pipeline(profile.pipeline(), profile.options())
        steps_table = None
        if quality_steps:
            stages.step("quality against steps")
            steps_table = _quality_vs_steps(model, stage, manifest, quality_steps, cache_dir, ui)
        report = {
            "target": profile.name,
            "model": manifest["model"]["name"],
            "reference": goldens.source,
            **({"verified_with": manifest["verified_with"]} if twin else {}),
            "reference_sampler": {k: goldens.manifest.get(k) for k in ("scheduler", "steps", "guidance_scale")},
            "sampler": {"solver": state.sampler.solver, "steps": state.sampler.num_steps, "guidance_scale": state.sampler.guidance_scale},
            "end_to_end": figures["end_to_end"],
            "per_case_psnr_db": figures["per_case_psnr_db"],
            "yardstick": figures["yardstick"],
            **({"quality_vs_steps": steps_table} if steps_table else {}),
            **_quantization_findings(pass_reports, figures["end_to_end"]),
            "components": {},
            "bundle_bytes": sum(e["bytes"] for e in entries.values()),
            "stages": stages.finish(),
        }
        if "mixed_precision" in report:
            report["mixed_precision"]["lowerings"] = attempt
        for name, e in entries.items():
            a = artifacts[name]
            report["components"][name] = {
                "file": e["file"], "bytes": e["bytes"], **figures["components"][name],
                **{k: a[k] for k in DELEGATION_FIELDS + ("tuning",) if k in a},
                "lowering_seconds": a["seconds"], "lowering_cached": a["cached"],
            }
        # Quality figures only: they are a function of the artifacts, so the manifest
        # stays byte-reproducible. Timings change run to run; they live in report.json.
        quality = ("psnr_db_min", "psnr_db_mean", "ssim_min", "ssim_mean", "cases")
        manifest["figures"] = {"end_to_end": {k: report["end_to_end"][k] for k in quality},
                               "components": {n: {"psnr_db_min": c["psnr_db_min"]} for n, c in report["components"].items()},
                               "reference": goldens.source, "timings": "report.json"}
        if bundle_file_names(stage) != sorted(manifest["files"]):  # the harness run wrote nothing into the bundle
            raise BuildError(f"files appeared in the bundle after its manifest listed them: "
                             f"{sorted(set(bundle_file_names(stage)) - set(manifest['files']))}")
        manifest_mod.validate(manifest)
        write_json(stage / "manifest.json", manifest)
        write_json(stage / "report.json", report)
    ui.step(f"bundle written to {out}")
    return report
