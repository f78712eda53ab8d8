"""The tolerance policy: the shipped default parses, bad policies give one UsageError, checks compare correctly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgc.compiler.errors import UsageError
from lgc.runtime_harness.policy import DEFAULT_POLICY, compare_with_baseline, evaluate_policy, load_policy, parse_policy

REPORT = {
    "target": "android-int8",
    "end_to_end": {"psnr_db_min": 27.0, "ssim_min": 0.93, "latency_ms_median": 100.0, "latency_ratio": 120.0},
    "components": {"unet": {"psnr_db_min": 41.0, "latency_ratio": 5.0, "latency_ms_median": 4.0, "bytes": 1_600_000},
                   "vae_decoder": {"psnr_db_min": 29.0, "latency_ratio": 18.0, "latency_ms_median": 14.0, "bytes": 270_000}},
    "bundle_bytes": 2_100_000,
    "yardstick": {"version": 1, "latency_ms_median": 0.8},
}


def test_default_policy_parses_and_judges():
    policy = load_policy(None)
    assert policy.source == str(DEFAULT_POLICY) and policy.version == 1
    checks = {c.name: c for c in evaluate_policy(REPORT, policy)}
    assert checks["end_to_end.psnr_db_min"].passed and checks["end_to_end.psnr_db_min"].limit == 25.0
    # vae_decoder at 29 dB is under the 30 dB component floor: that check, and only it, fails.
    assert [n for n, c in checks.items() if not c.passed] == ["vae_decoder.psnr_db_min"]
    assert checks["bundle.bytes"].limit == 2_600_000


def test_target_and_component_overrides():
    policy = parse_policy("""
policy_version = 1
[default]
component_psnr_db_min = 30
[targets.android-int8]
component_psnr_db_min = 20
[targets.android-int8.components.unet]
psnr_db_min = 45
bytes_max = 1_000_000
""")
    checks = {c.name: c for c in evaluate_policy(REPORT, policy)}
    assert checks["vae_decoder.psnr_db_min"].limit == 20 and checks["vae_decoder.psnr_db_min"].passed
    assert checks["unet.psnr_db_min"].limit == 45 and not checks["unet.psnr_db_min"].passed
    assert not checks["unet.bytes"].passed
    assert "end_to_end.ssim_min" not in checks  # not set anywhere: not checked


def test_baseline_regressions_are_caught():
    policy = load_policy(None)
    better = {**REPORT, "end_to_end": {**REPORT["end_to_end"], "psnr_db_min": 29.5},
              "components": {**REPORT["components"], "unet": {**REPORT["components"]["unet"], "latency_ratio": 3.0}},
              "bundle_bytes": 1_900_000}
    failed = sorted(c.name for c in compare_with_baseline(REPORT, better, policy) if not c.passed)
    assert failed == ["baseline.bundle.bytes", "baseline.end_to_end.psnr_db_min", "baseline.unet.latency_ratio"]
    assert all(c.passed for c in compare_with_baseline(REPORT, REPORT, policy))
    # Ratios against another yardstick version are not comparable: no latency check then.
    other = {**better, "yardstick": {"version": 2}}
    assert not [c for c in compare_with_baseline(REPORT, other, policy) if "latency" in c.name]


@pytest.mark.parametrize("text, match", [
    ("policy_version = 1\n[default]\ne2e_psnr_db = 3\n", "unknown key(s) ['e2e_psnr_db'] in [default]"),
    ("policy_version = 2\n", "policy_version 2 is newer"),
    ("[default]\n", "policy_version must be an integer"),
    ("policy_version = 1\n[default]\ne2e_psnr_db_min = 'high'\n", "default.e2e_psnr_db_min must be a non-negative number"),
    ("policy_version = 1\n[default\n", "not valid TOML"),
    ("policy_version = 1\n[limits]\n", "unknown section(s) ['limits']"),
    ("policy_version = 1\ntargets = 3\n", "[targets] must be a table"),
])
def test_bad_policies_are_one_usage_error(text, match):
    with pytest.raises(UsageError, match=None) as e:
        parse_policy(text)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_unreadable_policy_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")


toml_scalars = st.one_of(st.integers(-10, 10**9), st.floats(allow_nan=True), st.booleans(), st.text(max_size=8),
                         st.lists(st.integers(), max_size=3))
keys = st.sampled_from(["policy_version", "default", "targets", "baseline", "e2e_psnr_db_min", "components",
                        "android-int8", "psnr_db_min", "bytes_growth_max", "x"])


def _toml(value, path=()):
    """Render nested dicts as TOML tables (scalars with repr-ish literals)."""
    import json

    lines, tables = [], []
    for k, v in value.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, bool):
            lines.append(f'"{k}" = {str(v).lower()}')
        elif isinstance(v, float) and v != v:
            lines.append(f'"{k}" = nan')
        elif isinstance(v, float) and v in (float("inf"), float("-inf")):
            lines.append(f'"{k}" = {"inf" if v > 0 else "-inf"}')
        else:
            lines.append(f'"{k}" = {json.dumps(v)}')
    out = "\n".join(lines)
    for k, v in tables:
        name = ".".join(f'"{p}"' for p in (*path, k))
        out += f"\n[{name}]\n" + _toml(v, (*path, k))
    return out


policies = st.recursive(st.dictionaries(keys, toml_scalars, max_size=4),
                        lambda inner: st.dictionaries(keys, st.one_of(toml_scalars, inner), max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(policies)
def test_random_policies_never_crash(policy):
    try:
        parsed = parse_policy(_toml(policy))
    except UsageError as e:
        assert "\n" not in str(e)
        return
    evaluate_policy(REPORT, parsed)  # whatever parsed must also be usable


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_default_policy_never_crashes(data):
    text = DEFAULT_POLICY.read_text()
    i = data.draw(st.integers(0, len(text) - 1))
    j = data.draw(st.integers(i, min(len(text), i + 20)))
    mutated = text[:i] + data.draw(st.text(max_size=10)) + text[j:]
    try:
        evaluate_policy(REPORT, parse_policy(mutated))
    except UsageError as e:
        assert "\n" not in str(e)
