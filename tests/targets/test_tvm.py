"""TVM targets: arm64 Android archives verified through their host twin, host modules run by the Relax VM."""

from __future__ import annotations

import json
import struct
import tarfile

import pytest

pytest.importorskip("tvm")

EM_AARCH64 = 183  # ELF e_machine of AArch64


@pytest.fixture(scope="module")
def arm64_build(tmp_path_factory, tiny_pipeline):
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    out = tmp_path_factory.mktemp("tvm")
    report = build(tiny_pipeline("sd1"), "tvm-android-arm64", out, UI(quiet=True))
    return out, report


def _elf_machines(archive) -> dict[str, int]:
    machines = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            head = tar.extractfile(member).read(20)
            assert head[:4] == b"\x7fELF", member.name
            machines[member.name] = struct.unpack("<H", head[18:20])[0]
    return machines


def test_arm64_bundle_is_aarch64_objects(arm64_build):
    out, _ = arm64_build
    manifest = json.loads((out / "tvm-android-arm64" / "manifest.json").read_text())
    for name, entry in manifest["components"].items():
        assert entry["runtime"] == "tvm" and entry["file"] == f"{name}.tvm"
        machines = _elf_machines(out / "tvm-android-arm64" / entry["file"] / "module.tar")
        assert machines and set(machines.values()) == {EM_AARCH64}, machines


def test_arm64_bundle_is_verified_through_its_host_twin(arm64_build):
    out, report = arm64_build
    manifest = json.loads((out / "tvm-android-arm64" / "manifest.json").read_text())
    assert manifest["verified_with"]["target"] == "tvm-host" and report["verified_with"]["target"] == "tvm-host"
    # The tiny model has no goldens: the reference is its fp32 eager pipeline, which the twin (fp32) matches closely.
    assert report["end_to_end"]["psnr_db_min"] >= 50.0, report["end_to_end"]
    assert min(c["psnr_db_min"] for c in report["components"].values()) >= 50.0


def test_arm64_module_does_not_pretend_to_run_here(arm64_build):
    from lgc.compiler.errors import UnsupportedModelError
    from lgc.runtime_harness.runners import TVMRunner

    out, _ = arm64_build
    with pytest.raises(UnsupportedModelError, match="arm64 archive does not run on this machine"):
        TVMRunner(out / "tvm-android-arm64" / "unet.tvm")


def test_lgc_check_points_an_arm64_bundle_to_its_twin(arm64_build):
    from lgc.compiler.check import check
    from lgc.compiler.errors import UsageError

    out, _ = arm64_build
    with pytest.raises(UsageError, match="check its tvm-host twin instead"):
        check(out / "tvm-android-arm64")


def test_generate_refuses_the_arm64_bundle_and_runs_its_host_build(arm64_build, tiny_pipeline):
    """`lgc generate` names the twin for a phone-only bundle, and runs a tvm-host build of the same model."""
    import numpy as np
    import torch

    import lgc
    from lgc.compiler.errors import UsageError
    from lgc.compiler.model_import import load_pipeline
    from lgc.runtime_harness.harness import eager_reference
    from lgc.runtime_harness.metrics import psnr_db

    out, _ = arm64_build
    with pytest.raises(UsageError, match="generate with a tvm-host bundle"):
        lgc.load_bundle(out / "tvm-android-arm64")
    built = lgc.build(tiny_pipeline("sd1"), "tvm-host", out)  # the twin's lowerings are cached in out/.cache
    bundle = lgc.load_bundle(built.path)
    assert set(bundle.runtimes.values()) == {"the TVM runtime"}
    made = bundle.generate("a photo of a cat", seed=0)
    got = torch.from_numpy(np.array(made.images[0])).permute(2, 0, 1).float().unsqueeze(0) / 255
    model = load_pipeline(tiny_pipeline("sd1"), ("text_encoder", "unet", "vae_decoder"), None)
    ref = eager_reference(model, bundle.manifest["sampler"], ["a photo of a cat"], [0], []).cases[0].image
    assert psnr_db(got, ref.unsqueeze(0), data_range=1.0) >= 40.0
