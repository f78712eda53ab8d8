"""``lgc check`` on real bundles: a good one passes, an altered one is bad input, a degraded one fails by name."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from lgc.compiler.cli import main

# Every int8 op, per-tensor weights, nothing kept in fp32: the recipe the
# quantization notes measured at about 7 dB end to end. Calibrated on one prompt and
# one U-Net sample per timestep: with every activation static, the full calibration
# set through histogram observers was most of this build (20 minutes of a test run).
DEGRADED = ['annotate_xnnpack_w8a8.operators=["conv","linear","add","mul"]', "annotate_xnnpack_w8a8.dynamic_activations=[]",
            "annotate_xnnpack_w8a8.keep_float_modules=[]", "annotate_xnnpack_w8a8.per_channel=false",
            "calibrate_observers.max_prompts=1", "calibrate_observers.seeds=[1000]", "calibrate_observers.unet_samples_per_timestep=1"]


@pytest.fixture(scope="session")
def degraded_bundle(tmp_path_factory):
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    out = tmp_path_factory.mktemp("degraded")
    build(None, "android-int8", out, UI(quiet=True), settings=DEGRADED)
    return out / "android-int8"


@pytest.fixture(scope="session")
def checked(bundles, tmp_path_factory):
    """One passing ``lgc check`` of the int8 bundle, with all three reports."""
    out = tmp_path_factory.mktemp("check")
    code = main(["check", str(bundles["android-int8"][0]), "--quiet", "--junit", str(out / "junit.xml"),
                 "--html", str(out / "report.html"), "--json", str(out / "check.json")])
    return code, out


def test_fresh_bundle_passes(checked):
    code, out = checked
    assert code == 0
    result = json.loads((out / "check.json").read_text())
    assert result["passed"] and len(result["checks"]) >= 8
    names = {c["name"] for c in result["checks"]}
    assert {"end_to_end.psnr_db_min", "end_to_end.ssim_min", "unet.psnr_db_min", "bundle.bytes"} <= names
    # The same figures as the build's report: comparable as a baseline either way.
    assert result["end_to_end"]["cases"] == 16 and result["yardstick"]["latency_ms_median"] > 0


def test_junit_lists_every_check(checked):
    _, out = checked
    result = json.loads((out / "check.json").read_text())
    root = ET.parse(out / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == len(result["checks"]) and root.get("failures") == "0"
    assert {f"{c.get('classname').rsplit('.', 1)[-1]}.{c.get('name')}" for c in cases} >= {"unet.psnr_db_min", "end_to_end.ssim_min"}


def test_html_is_self_contained_with_the_image_grid(checked):
    _, out = checked
    page = (out / "report.html").read_text()
    assert "PASSED" in page and "<script" not in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing fetched from elsewhere
    grid = re.findall(r"<img alt='comparison [^']*' src='data:image/png;base64,([^']+)'", page)
    assert len(grid) == 16
    img = Image.open(io.BytesIO(base64.b64decode(grid[0])))
    assert img.format == "PNG" and img.width > 3 * img.height / 2  # three panels side by side
    assert "alt='latency chart'" in page and "alt='size chart'" in page and "Pass report" in page


def test_altered_weight_file_is_bad_input(bundles, tmp_path, capsys):
    folder = tmp_path / "b"
    shutil.copytree(bundles["android-int8"][0], folder)
    pte = folder / "vae_decoder.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 3] ^= 0x01
    pte.write_bytes(bytes(data))
    assert main(["check", str(folder), "--quiet", "--junit", str(tmp_path / "j.xml")]) == 2
    err = capsys.readouterr().err
    assert "vae_decoder.pte was altered after build" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "j.xml").exists()  # nothing was run, nothing reported


def test_degraded_bundle_fails_naming_component_and_metric(degraded_bundle, tmp_path, capsys):
    code = main(["check", str(degraded_bundle), "--quiet", "--junit", str(tmp_path / "j.xml"), "--json", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "end_to_end.psnr_db_min" in err and "checks failed" in err
    failed = [c["name"] for c in json.loads((tmp_path / "c.json").read_text())["checks"] if not c["passed"]]
    assert any(n.split(".")[0] in ("unet", "vae_decoder", "text_encoder") for n in failed), failed
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == str(len(failed))


def test_baseline_regression_fails(checked, bundles, tmp_path, capsys):
    _, out = checked
    base = json.loads((out / "check.json").read_text())
    base["end_to_end"]["psnr_db_min"] += 3.0  # an earlier build that was 3 dB better
    base["bundle_bytes"] = int(base["bundle_bytes"] * 0.8)
    (tmp_path / "base.json").write_text(json.dumps(base))
    code = main(["check", str(bundles["android-int8"][0]), "--quiet", "--baseline", str(tmp_path / "base.json")])
    err = capsys.readouterr().err
    assert code == 1 and "baseline.end_to_end.psnr_db_min" in err and "baseline.bundle.bytes" in err


@pytest.mark.parametrize("args, match", [
    (["--policy", "{missing}"], "cannot read policy"),
    (["--baseline", "{missing}"], "baseline report not found"),
    (["--golden", "{tmp}"], "not a golden folder"),
])
def test_bad_check_inputs_exit_2(bundles, tmp_path, capsys, args, match):
    args = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in args]
    assert main(["check", str(bundles["android-int8"][0]), "--quiet", *args]) == 2
    assert match in capsys.readouterr().err


def test_missing_bundle_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "bundle folder not found" in capsys.readouterr().err
