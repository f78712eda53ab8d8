"""``lgc check``: the regression gate for an exported bundle.

Order matters: the bundle is verified (schema, hashes) before anything runs,
so a tampered file is reported as such (exit 2) and never measured; then the
harness runs it against the goldens, the policy and the optional baseline
turn the figures into checks, and the reports are written even when checks
fail (that is when people read them). Exit 1 names every failing check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lgc.compiler import manifest as manifest_mod
from lgc.compiler.bundle import sha256_file, verify_bundle_files
from lgc.compiler.errors import QualityGateError, UsageError
from lgc.runtime_harness.policy import compare_with_baseline, evaluate_policy, load_policy
from lgc.targets.executorch.emit import DELEGATION_FIELDS


def _goldens(manifest: dict, golden_dir: Path | None):
    from lgc.runtime_harness.golden import find_goldens, read_golden_dir

    folder = Path(golden_dir) if golden_dir else find_goldens(manifest["model"]["sha256"])
    if folder is None:
        raise UsageError(f"no golden outputs recorded for model {manifest['model']['name']} "
                         f"(sha256 {manifest['model']['sha256'][:12]}...); pass --golden DIR (see `lgc golden`)")
    if not (folder / "manifest.json").is_file():
        raise UsageError(f"not a golden folder (no manifest.json): {folder}")
    goldens = read_golden_dir(folder)
    recorded = (goldens.manifest.get("model") or {}).get("sha256")
    if recorded != manifest["model"]["sha256"]:
        # Goldens of another model (or of this one before it changed) would fail every check for the wrong reason.
        raise UsageError(f"goldens {folder} were recorded for model sha256 {str(recorded)[:12]}..., the bundle was built from "
                         f"{manifest['model']['sha256'][:12]}... (stale goldens: regenerate them with `lgc golden`)")
    size = manifest["image"]["height"]
    if goldens.manifest.get("image_size") != size:
        raise UsageError(f"goldens {folder} are {goldens.manifest.get('image_size')} px, the bundle makes {size} px images")
    return goldens


def _read_baseline(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"baseline report not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"baseline {path}: not a readable JSON report ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("end_to_end"), dict) or not isinstance(data.get("components"), dict):
        raise UsageError(f"baseline {path}: not an lgc report (needs end_to_end and components)")
    return data


def check(bundle: Path, golden_dir: Path | None = None, policy_path: Path | None = None, baseline: Path | None = None,
          junit: Path | None = None, html: Path | None = None, json_out: Path | None = None, ui=None) -> dict:
    """Verify, run and judge ``bundle``; write the requested reports; raise QualityGateError when a check fails."""
    t0 = time.perf_counter()
    step = ui.step if ui else (lambda msg: None)
    bundle = Path(bundle)
    # Inputs first, all of them, before the minutes of running: a typo in the policy must not cost a run.
    manifest = manifest_mod.load(bundle)
    verify_bundle_files(bundle, manifest)
    twin = (manifest.get("verified_with") or {}).get("target")
    if twin:
        # Its own code is for another machine (arm64): the build measured it through a twin bundle.
        raise UsageError(f"{manifest['target']} artifacts do not run on this machine; check its {twin} twin instead "
                         f"(`lgc build --target {twin}` builds it from the same graphs)")
    policy = load_policy(policy_path)
    base = _read_baseline(baseline) if baseline else None
    goldens = _goldens(manifest, golden_dir)
    step(f"bundle {bundle} verified: {len(manifest['files'])} files at their sha256, nothing unlisted; "
         f"bundle digest (sha256 of manifest.json) {sha256_file(bundle / 'manifest.json')}")

    from lgc.runtime_harness.harness import run_bundle

    step(f"running {manifest['target']} against {goldens.source}")
    figures = run_bundle(bundle, manifest, goldens, progress=step, keep_images=bool(html))
    passes_path = bundle / "passes.json"
    passes = json.loads(passes_path.read_text()) if passes_path.is_file() else None
    artifacts = (passes or {}).get("artifacts", {})
    components = {}
    for name, entry in manifest["components"].items():
        art = artifacts.get(name, {})
        components[name] = {"file": entry["file"], "bytes": entry["bytes"], **figures["components"][name],
                            **{k: art[k] for k in DELEGATION_FIELDS if k in art}}
    report = {
        "target": manifest["target"],
        "model": manifest["model"]["name"],
        "bundle": str(bundle),
        "reference": goldens.source,
        "policy": f"{policy.source} (version {policy.version})",
        "baseline": str(baseline) if baseline else None,
        "end_to_end": figures["end_to_end"],
        "per_case_psnr_db": figures["per_case_psnr_db"],
        "yardstick": figures["yardstick"],
        "components": components,
        "bundle_bytes": sum(e["bytes"] for e in manifest["components"].values()),
    }
    built = bundle / "report.json"
    if built.is_file():  # figures only the build computes (e.g. quality vs steps) are carried over
        for key in ("quality_vs_steps",):
            value = json.loads(built.read_text()).get(key)
            if value:
                report[key] = value
    checks = evaluate_policy(report, policy)
    if base is not None:
        checks += compare_with_baseline(report, base, policy)
    report["checks"] = [c.to_json() for c in checks]
    report["passed"] = all(c.passed for c in checks)
    report["seconds"] = round(time.perf_counter() - t0, 1)

    from lgc.runtime_harness import reports

    if json_out:
        _write(json_out, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    if junit:
        _write(junit, lambda p: reports.write_junit(p, checks, f"lgc.check.{manifest['target']}", report["seconds"]))
    if html:
        step("writing the HTML report")
        _write(html, lambda p: reports.write_html(p, report, figures.get("images", []), passes))
    if ui:
        ui.checks(checks)
    failed = [c for c in checks if not c.passed]
    if failed:
        names = "; ".join(c.line() for c in failed)
        raise QualityGateError(f"{len(failed)} of {len(checks)} checks failed: {names}")
    return report


def _write(path: Path, writer) -> None:
    """Write a report atomically: a reader (or a CI upload) never sees half a file."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise UsageError(f"report folder does not exist: {path.parent}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        writer(tmp)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
