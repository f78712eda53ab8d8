"""Property tests: random and mutated manifests, profiles and pass settings never crash with anything but a UsageError."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lgc.compiler import manifest as manifest_mod
from lgc.compiler.errors import UsageError
from lgc.compiler.pass_manager import resolve_pipeline
from lgc.targets.profiles import PROFILES, get_profile

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)


def _valid_manifest() -> dict:
    entry = {"file": "unet.pte", "sha256": "0" * 64, "bytes": 10, "runtime": "executorch", "precision": "int8",
             "inputs": [{"name": "sample", "shape": [2, 4, 16, 16], "dtype": "float32"}],
             "outputs": [{"name": "out", "shape": [2, 4, 16, 16], "dtype": "float32"}]}
    return {"schema_version": manifest_mod.SCHEMA_VERSION, "components": {"unet": entry}, "files": {"unet.pte": "0" * 64}}


def _check(man) -> None:
    try:
        manifest_mod.validate(man)
    except UsageError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_json_as_manifest(value):
    _check(value)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_manifest(data):
    # One key path of a manifest-shaped document set to a random value.
    man = _valid_manifest()
    path = data.draw(st.lists(st.sampled_from(["schema_version", "components", "unet", "inputs", "shape", "sha256", "bytes", 0]), max_size=4))
    node = man
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
    if path and isinstance(node, dict):
        node[path[-1]] = data.draw(json_values)
    _check(man)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_manifest_files_of_any_text(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("bundle")
    (folder / "manifest.json").write_text(text)
    try:
        manifest_mod.load(folder)
    except UsageError as e:
        assert "\n" not in str(e)


settings_strings = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, o, v: f"{p}.{o}={v}",
              st.sampled_from(["annotate_xnnpack_w8a8", "calibrate_observers", "fold_constants", "lower_sampler", "nope", ""]),
              st.sampled_from(["operators", "per_channel", "seeds", "max_prompts", "max_elements", "components", "steps", "x"]),
              st.one_of(st.text(max_size=12), json_values.map(json.dumps))),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(PROFILES)), st.lists(settings_strings, max_size=3),
       st.fixed_dictionaries({}, optional={"steps": st.integers(-5, 100), "image_size": st.integers(-5, 4096),
                                           "solver": st.text(max_size=8), "guidance_scale": st.floats()}))
def test_random_profile_settings(target, sets, overrides):
    try:
        profile = get_profile(target).with_overrides(**overrides).with_pass_options(sets)
        resolve_pipeline(profile.pipeline(), profile.options())
    except UsageError as e:
        assert "\n" not in str(e)


def test_a_known_good_setting_resolves():
    profile = get_profile("android-int8").with_pass_options(["annotate_xnnpack_w8a8.per_channel=false"])
    planned = resolve_pipeline(profile.pipeline(), profile.options())
    cfg = next(p.config for p in planned if p.cls.name == "annotate_xnnpack_w8a8")
    assert cfg.per_channel is False
