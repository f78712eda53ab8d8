"""Bundles from elsewhere: every tampering is refused by verification with one line (exit 2), before anything loads.

The bundles here are synthetic (a few small files and the manifest keys verification reads), so the
corpus runs in seconds; tests/compiler/test_cli_errors.py tampers a real bundle through `lgc check`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lgc.compiler import manifest as manifest_mod
from lgc.compiler.bundle import bundle_files, verify_bundle_files
from lgc.compiler.errors import UsageError


def make_bundle(folder: Path, salt: str = "") -> dict:
    folder.mkdir(parents=True)
    (folder / "unet.pte").write_bytes(b"unet" + salt.encode() * 100)
    (folder / "vae_decoder.pte").write_bytes(b"vae" + salt.encode() * 50)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}, "salt": salt}))
    files = bundle_files(folder)
    manifest = {"files": files, "tokenizer": {"folder": "tokenizer"},
                "components": {"unet": {"file": "unet.pte", "sha256": files["unet.pte"]},
                               "vae_decoder": {"file": "vae_decoder.pte", "sha256": files["vae_decoder.pte"]}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "b"
    return folder, make_bundle(folder)


def refused(folder: Path, manifest: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match) as e:
        verify_bundle_files(folder, manifest)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_a_fresh_bundle_verifies(bundle):
    verify_bundle_files(*bundle)


@pytest.mark.parametrize("path", ["../outside.pte", "/etc/hostname", "~/x", "tokenizer/../../x", "a\\..\\b", "", "."])
def test_paths_that_leave_the_bundle(bundle, path):
    folder, man = bundle
    refused(folder, {**man, "files": {**man["files"], path: "0" * 64}}, "not a plain relative path|resolves outside|missing")
    comp = {**man["components"], "unet": {**man["components"]["unet"], "file": path}}
    refused(folder, {**man, "components": comp}, "not a plain relative path|resolves outside|missing|altered")


def test_tokenizer_folder_outside(bundle):
    folder, man = bundle
    refused(folder, {**man, "tokenizer": {"folder": "../tokenizer"}}, "not a plain relative path")


@pytest.mark.parametrize("how", ["file", "dir", "loop", "inside"])
def test_symbolic_links_anywhere(bundle, tmp_path, how):
    folder, man = bundle
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    link = folder / "tokenizer" / "extra"
    if how == "file":
        link.symlink_to(outside / "secret")
    elif how == "dir":
        link.symlink_to(outside, target_is_directory=True)
    elif how == "loop":
        link.symlink_to(link)
    else:  # even one that points at a listed file inside the bundle
        link.symlink_to(folder / "unet.pte")
    refused(folder, man, "tokenizer/extra is a symbolic link")


@pytest.mark.parametrize("where", ["extra.bin", "tokenizer/added_tokens.json", "deep/er/file"])
def test_unlisted_files(bundle, where):
    folder, man = bundle
    (folder / where).parent.mkdir(parents=True, exist_ok=True)
    (folder / where).write_text("{}")
    refused(folder, man, f"{where} is not listed in the manifest")


@pytest.mark.parametrize("tamper", ["flip", "truncate", "empty", "delete", "dir"])
def test_altered_and_missing_files(bundle, tamper):
    folder, man = bundle
    f = folder / "tokenizer" / "tokenizer.json"
    if tamper == "flip":
        f.write_text(f.read_text().replace('"a": 0, "b": 1', '"a": 1, "b": 0'))
    elif tamper == "truncate":
        f.write_bytes(f.read_bytes()[:10])
    elif tamper == "empty":
        f.write_bytes(b"")
    elif tamper == "delete":
        f.unlink()
    else:
        f.unlink()
        f.mkdir()
    refused(folder, man, "tokenizer/tokenizer.json (was altered after build|is listed in the manifest but missing)")


def test_files_swapped_between_bundles(tmp_path):
    a, man_a = tmp_path / "a", make_bundle(tmp_path / "a", "one")
    make_bundle(tmp_path / "b", "two")
    shutil.copy(tmp_path / "b" / "unet.pte", a / "unet.pte")
    refused(a, man_a, "unet.pte was altered after build")
    shutil.copy(tmp_path / "b" / "unet.pte", a / "vae_decoder.pte")  # another component's bytes under this name
    refused(a, man_a, "was altered after build")


def test_a_component_not_under_the_file_list(bundle):
    folder, man = bundle
    files = {k: v for k, v in man["files"].items() if k != "unet.pte"}
    refused(folder, {**man, "files": files}, "unet.pte is not listed in the manifest")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(list("ab./\\~-_ ") + ["..", "tokenizer", "unet.pte", "\x00", "é"]), max_size=10).map("".join))
def test_any_path_string_is_refused_or_stays_inside(bundle, path):
    """Whatever string a manifest names: one-line UsageError, or it resolves to a listed file inside the bundle."""
    folder, man = bundle
    comp = {**man["components"], "unet": {**man["components"]["unet"], "file": path}}
    try:
        verify_bundle_files(folder, {**man, "components": comp})
    except UsageError as e:
        assert "\n" not in str(e)
        return
    resolved = (folder / path).resolve()
    assert resolved.is_relative_to(folder.resolve()) and resolved == (folder / "unet.pte").resolve()


@pytest.mark.parametrize("text,match", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"schema_version": 2, "sampler": {"num_steps": 1e999}}', "manifest is invalid"),
    ("\ufeff{}", "not valid JSON|manifest is invalid"),
])
def test_hostile_manifest_text(tmp_path, text, match):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(UsageError, match=match):
        manifest_mod.load(tmp_path)


def test_oversized_manifest_is_not_parsed(tmp_path):
    with open(tmp_path / "manifest.json", "wb") as f:
        f.truncate(manifest_mod.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(UsageError, match="more than a manifest holds"):
        manifest_mod.load(tmp_path)


def test_a_report_file_named_as_an_artifact(bundle):
    folder, man = bundle
    comp = {**man["components"], "unet": {**man["components"]["unet"], "file": "manifest.json"}}
    refused(folder, {**man, "components": comp}, "unet file manifest.json is not among the files the manifest lists")
