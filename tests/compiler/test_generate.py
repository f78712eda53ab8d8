"""`lgc generate` and `lgc.load_bundle(...).generate(...)`: verified bundles, the goldens' images, nothing half-written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import lgc
from lgc.compiler.cli import main
from lgc.compiler.errors import UsageError
from lgc.runtime_harness.golden import GOLDEN_ROOT, read_golden_dir
from lgc.runtime_harness.metrics import psnr_db

PROMPT = "a photo of a tabby cat"


def as_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().unsqueeze(0) / 255


@pytest.fixture(scope="module")
def loaded(bundles):
    return lgc.load_bundle(bundles["android-int8"][0])


@pytest.mark.parametrize("seed", [0, 1])
def test_images_are_the_goldens_as_the_harness_scores_them(loaded, bundles, seed):
    """Same prompt and seed as a golden case: the same image the build's end-to-end check scored."""
    goldens = read_golden_dir(GOLDEN_ROOT / "reference-student")
    case = next(c for c in goldens.cases if c.prompt == PROMPT and c.seed == seed)
    got = as_tensor(loaded.generate(PROMPT, seed=seed).images[0])
    ref = case.image.unsqueeze(0) if case.image.dim() == 3 else case.image
    # The bundle's own worst case over the 16 goldens, less 8-bit PNG rounding (about 0.5 dB here).
    assert psnr_db(got, ref, data_range=1.0) >= bundles["android-int8"][1]["end_to_end"]["psnr_db_min"] - 1.0


def test_options_change_the_image_and_timings_are_reported(loaded):
    base = as_tensor(loaded.generate(PROMPT, seed=3).images[0])
    again = loaded.generate(PROMPT, seed=3)
    assert torch.equal(as_tensor(again.images[0]), base)  # deterministic
    assert again.calls == {"text_encoder": 2, "unet": len(loaded.manifest["sampler"]["timesteps"]), "vae_decoder": 1}
    assert all(ms > 0 for ms in again.timings_ms.values())
    for kw in ({"guidance": 1.0}, {"negative": "a dog"}, {"seed": 4}):
        assert psnr_db(as_tensor(loaded.generate(PROMPT, **{"seed": 3, **kw}).images[0]), base, data_range=1.0) < 40, kw
    two = loaded.generate(PROMPT, seed=3, count=2)
    assert two.seeds == [3, 4] and torch.equal(as_tensor(two.images[0]), base)


def test_cli_writes_pngs(bundles, tmp_path, loaded):
    out = tmp_path / "img" / "cat.png"
    assert main(["generate", str(bundles["android-int8"][0]), PROMPT, "--seed", "1", "-n", "2", "-o", str(out), "--quiet"]) == 0
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == ["cat-0.png", "cat-1.png"]
    first = Image.open(out.parent / "cat-0.png")
    assert first.size == (128, 128) and first.mode == "RGB"
    assert torch.equal(as_tensor(first), as_tensor(loaded.generate(PROMPT, seed=1).images[0]))


def test_a_tampered_bundle_runs_nothing_and_writes_nothing(bundles, tmp_path, capsys):
    folder = tmp_path / "b"
    shutil.copytree(bundles["android-int8"][0], folder)
    tok = folder / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")  # still valid JSON, one byte more
    out = tmp_path / "x.png"
    assert main(["generate", str(folder), PROMPT, "-o", str(out)]) == 2
    assert "tokenizer/tokenizer.json was altered after build" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["-n", "0"], "-n must be at least 1"),
    (["-o", "cat.jpg"], "-o must name a .png file"),
])
def test_bad_arguments(bundles, tmp_path, capsys, argv, message):
    assert main(["generate", str(bundles["android-int8"][0]), PROMPT, *argv]) == 2
    assert message in capsys.readouterr().err


def test_guidance_modes_are_checked(loaded):
    m = loaded.manifest
    saved = dict(m["guidance"])
    try:
        m["guidance"].update(mode="none", timestep_cond=None)
        with pytest.raises(UsageError, match="takes no guidance"):
            loaded.generate(PROMPT, guidance=3.0)
        with pytest.raises(UsageError, match="--negative needs classifier-free guidance"):
            loaded.generate(PROMPT, negative="blurry")
    finally:
        m["guidance"].clear()
        m["guidance"].update(saved)


def test_python_build_api_mirrors_the_cli(bundles, tmp_path):
    """``lgc.build`` with the CLI's defaults makes the same bundle (warm: the fixture's artifact cache)."""
    made = bundles["android-fp32"][0]
    built = lgc.build(target="android-fp32", out=tmp_path, cache_dir=made.parent / ".cache")
    assert built.path == tmp_path / "android-fp32"
    assert (built.path / "manifest.json").read_bytes() == (made / "manifest.json").read_bytes()
    assert built.report["end_to_end"]["psnr_db_min"] == bundles["android-fp32"][1]["end_to_end"]["psnr_db_min"]
    with pytest.raises(UsageError, match="does not quantize to int8"):
        lgc.build(target="android-fp32", out=tmp_path, min_psnr=30)
