"""Bad input: one clear line on stderr, a distinct non-zero exit code, and no bundle left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from lgc.compiler.bundle import staged_bundle
from lgc.compiler.errors import UsageError


def lgc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lgc.compiler.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_one_line_error(res, code, match):
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    lines = [l for l in res.stderr.splitlines() if l.startswith("lgc: ")]
    assert len(lines) == 1 and match in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "setup, code, match",
    [
        ("missing", 3, "model folder not found"),
        ("not_diffusers", 3, "not a diffusers pipeline folder (no model_index.json)"),
        ("unsupported", 4, "unet: down block 0 'SimpleCrossAttnDownBlock2D' is not supported"),
    ],
)
def test_bad_model_folder(tmp_path, tiny_pipeline, setup, code, match):
    model = tmp_path / "model"
    if setup == "not_diffusers":
        model.mkdir()
        (model / "README.txt").write_text("just a folder")
    elif setup == "unsupported":
        shutil.copytree(tiny_pipeline("sd1"), model)
        cfg = json.loads((model / "unet" / "config.json").read_text())
        cfg["down_block_types"][0] = "SimpleCrossAttnDownBlock2D"
        (model / "unet" / "config.json").write_text(json.dumps(cfg))
    res = lgc("build", "--target", "android-int8", "--model", str(model), "--out", str(tmp_path / "build"))
    assert_one_line_error(res, code, match)
    assert not (tmp_path / "build" / "android-int8").exists()
    assert not [p for p in (tmp_path / "build").glob(".android-int8.staging*")]


def test_unknown_target(tmp_path):
    res = lgc("build", "--target", "android-int4-turbo", "--out", str(tmp_path / "build"))
    assert_one_line_error(res, 2, "unknown target 'android-int4-turbo'; known targets: android-int8")
    assert not (tmp_path / "build" / "android-int4-turbo").exists()


def test_bad_options_are_usage_errors(tmp_path):
    assert_one_line_error(lgc("build", "--target", "android-int8", "--steps", "0", "--out", str(tmp_path)), 2, "--steps must be at least 1")
    assert_one_line_error(lgc("build", "--target", "android-int8", "--solver", "heun", "--out", str(tmp_path)), 2, "unknown solver 'heun'")
    assert_one_line_error(lgc("frobnicate"), 2, "invalid choice")


def test_failed_build_keeps_previous_bundle(tmp_path):
    target = tmp_path / "android-int8"
    with staged_bundle(target) as stage:
        (stage / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_bundle(target) as stage:
            (stage / "manifest.json").write_text("half-written")
            raise RuntimeError("lowering failed")
    assert (target / "manifest.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


def test_second_concurrent_build_is_refused(tmp_path):
    target = tmp_path / "android-int8"
    with staged_bundle(target):
        with pytest.raises(UsageError, match="another lgc build is writing"):
            with staged_bundle(target):
                pass


def test_listing_commands():
    res = lgc("passes")
    assert res.returncode == 0 and "lower_sampler" in res.stdout and "annotate_xnnpack_w8a8" in res.stdout
    res = lgc("targets")
    assert res.returncode == 0 and "android-int8" in res.stdout and "android-fp32" in res.stdout
