"""The tolerance policy of ``lgc check``: reading it, and turning a report into pass/fail checks.

A policy is a TOML file (the default one is ``policy.default.toml`` beside
this module, documented there). Reading it never raises anything but a
one-line ``UsageError``: a policy comes from users, and a typo in it must say
which key is wrong, not crash the gate.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from lgc.compiler.errors import UsageError

POLICY_VERSION = 1
DEFAULT_POLICY = Path(__file__).with_name("policy.default.toml")

LIMIT_KEYS = ("e2e_psnr_db_min", "e2e_ssim_min", "component_psnr_db_min", "component_latency_ratio_max",
              "e2e_latency_ratio_max", "bundle_bytes_max")
COMPONENT_KEYS = ("psnr_db_min", "latency_ratio_max", "bytes_max")
BASELINE_KEYS = ("psnr_drop_db_max", "ssim_drop_max", "bytes_growth_max", "latency_ratio_growth_max")


@dataclass(frozen=True)
class Check:
    """One check: ``value`` compared with ``limit`` (``kind`` "min": value >= limit; "max": value <= limit)."""

    name: str  # e.g. "unet.psnr_db_min", "baseline.end_to_end.psnr_db_min"
    value: float
    limit: float
    kind: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        rel = ">=" if self.kind == "min" else "<="
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.name}: {_fmt(self.value)} (limit {rel} {_fmt(self.limit)}) {verdict}{' - ' + self.detail if self.detail else ''}"

    def to_json(self) -> dict:
        return asdict(self)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _number(where: str, key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
        raise UsageError(f"policy: {where}.{key} must be a non-negative number, got {v!r}")
    return float(v)


def _limits(where: str, table, allowed: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(table, dict):
        raise UsageError(f"policy: [{where}] must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed) - {"components"})
    if unknown:
        raise UsageError(f"policy: unknown key(s) {unknown} in [{where}]; known: {', '.join(allowed)}")
    return {k: _number(where, k, v) for k, v in table.items() if k != "components"}


@dataclass(frozen=True)
class Policy:
    source: str
    version: int
    default: dict
    targets: dict  # target -> (limits, {component: limits})
    baseline: dict

    def for_target(self, target: str) -> tuple[dict, dict]:
        """The limits for ``target`` (default overridden by the target's table) and its per-component overrides."""
        limits, components = self.targets.get(target, ({}, {}))
        return {**self.default, **limits}, components


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"policy {source}: not valid TOML ({e})") from None
    version = data.get("policy_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(f"policy {source}: policy_version must be an integer, got {version!r}")
    if version > POLICY_VERSION:
        raise UsageError(f"policy {source}: policy_version {version} is newer than this lgc understands ({POLICY_VERSION})")
    unknown = sorted(set(data) - {"policy_version", "default", "targets", "baseline"})
    if unknown:
        raise UsageError(f"policy {source}: unknown section(s) {unknown}")
    default = _limits("default", data.get("default", {}), LIMIT_KEYS)
    targets_raw = data.get("targets", {})
    if not isinstance(targets_raw, dict):
        raise UsageError(f"policy {source}: [targets] must be a table")
    targets = {}
    for name, table in targets_raw.items():
        limits = _limits(f"targets.{name}", table, LIMIT_KEYS)
        comps_raw = table.get("components", {})
        if not isinstance(comps_raw, dict):
            raise UsageError(f"policy: targets.{name}.components must be a table")
        comps = {c: _limits(f"targets.{name}.components.{c}", t, COMPONENT_KEYS) for c, t in comps_raw.items()}
        targets[name] = (limits, comps)
    baseline = _limits("baseline", data.get("baseline", {}), BASELINE_KEYS)
    return Policy(source, version, default, targets, baseline)


def load_policy(path: Path | None) -> Policy:
    path = Path(path) if path else DEFAULT_POLICY
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read policy {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_policy(text, str(path))


def _min(name, value, limit, detail="") -> Check:
    return Check(name, float(value), float(limit), "min", value >= limit, detail)


def _max(name, value, limit, detail="") -> Check:
    return Check(name, float(value), float(limit), "max", value <= limit, detail)


def evaluate_policy(report: dict, policy: Policy) -> list[Check]:
    """The checks ``policy`` sets for ``report`` (the figures of one harness run)."""
    limits, per_component = policy.for_target(report["target"])
    checks = []
    e2e = report["end_to_end"]
    if limits.get("e2e_psnr_db_min"):
        checks.append(_min("end_to_end.psnr_db_min", e2e["psnr_db_min"], limits["e2e_psnr_db_min"]))
    if limits.get("e2e_ssim_min"):
        checks.append(_min("end_to_end.ssim_min", e2e["ssim_min"], limits["e2e_ssim_min"]))
    if limits.get("e2e_latency_ratio_max") and e2e.get("latency_ratio") is not None:
        checks.append(_max("end_to_end.latency_ratio", e2e["latency_ratio"], limits["e2e_latency_ratio_max"],
                           f"{e2e['latency_ms_median']} ms"))
    for name, comp in report["components"].items():
        own = per_component.get(name, {})
        psnr = own.get("psnr_db_min", limits.get("component_psnr_db_min"))
        if psnr and comp.get("psnr_db_min") is not None:
            checks.append(_min(f"{name}.psnr_db_min", comp["psnr_db_min"], psnr))
        ratio = own.get("latency_ratio_max", limits.get("component_latency_ratio_max"))
        if ratio and comp.get("latency_ratio") is not None:
            checks.append(_max(f"{name}.latency_ratio", comp["latency_ratio"], ratio, f"{comp['latency_ms_median']} ms"))
        if own.get("bytes_max"):
            checks.append(_max(f"{name}.bytes", comp["bytes"], own["bytes_max"]))
    if limits.get("bundle_bytes_max"):
        checks.append(_max("bundle.bytes", report["bundle_bytes"], limits["bundle_bytes_max"]))
    return checks


def compare_with_baseline(report: dict, baseline: dict, policy: Policy) -> list[Check]:
    """Checks that ``report`` did not fall behind ``baseline`` (an earlier report) beyond the policy's tolerances."""
    tol = policy.baseline
    checks = []
    drop = tol.get("psnr_drop_db_max")
    if drop is not None:
        checks.append(_min("baseline.end_to_end.psnr_db_min", report["end_to_end"]["psnr_db_min"],
                           baseline["end_to_end"]["psnr_db_min"] - drop, f"baseline {baseline['end_to_end']['psnr_db_min']}"))
    if tol.get("ssim_drop_max") is not None:
        checks.append(_min("baseline.end_to_end.ssim_min", report["end_to_end"]["ssim_min"],
                           baseline["end_to_end"]["ssim_min"] - tol["ssim_drop_max"], f"baseline {baseline['end_to_end']['ssim_min']}"))
    if tol.get("bytes_growth_max") is not None and baseline.get("bundle_bytes"):
        checks.append(_max("baseline.bundle.bytes", report["bundle_bytes"], round(baseline["bundle_bytes"] * (1 + tol["bytes_growth_max"])),
                           f"baseline {baseline['bundle_bytes']:,}"))
    same_stick = (report.get("yardstick") or {}).get("version") == (baseline.get("yardstick") or {}).get("version") is not None
    for name, comp in report["components"].items():
        base = baseline.get("components", {}).get(name)
        if base is None:
            continue
        if drop is not None and comp.get("psnr_db_min") is not None and base.get("psnr_db_min") is not None:
            checks.append(_min(f"baseline.{name}.psnr_db_min", comp["psnr_db_min"], base["psnr_db_min"] - drop, f"baseline {base['psnr_db_min']}"))
        growth = tol.get("latency_ratio_growth_max")
        if growth is not None and same_stick and comp.get("latency_ratio") and base.get("latency_ratio"):
            checks.append(_max(f"baseline.{name}.latency_ratio", comp["latency_ratio"], round(base["latency_ratio"] * (1 + growth), 4),
                               f"baseline {base['latency_ratio']}"))
    return checks
