"""android-int8 and android-fp32 of the reference model: loadable artifacts, a valid manifest, the quality bars."""

from __future__ import annotations

import json

import pytest
import torch

from lgc.compiler import manifest as manifest_mod
from lgc.compiler.bundle import verify_bundle_files
from lgc.compiler.errors import UsageError

COMPONENTS = ("text_encoder", "unet", "vae_decoder")


@pytest.mark.parametrize("target", ["android-int8", "android-fp32"])
def test_bundle_layout_manifest_and_hashes(bundles, target):
    folder, _ = bundles[target]
    man = manifest_mod.load(folder)  # validates against the JSON Schema
    assert set(man["components"]) == set(COMPONENTS)
    for c in COMPONENTS:
        assert (folder / f"{c}.pte").exists()
    verify_bundle_files(folder, man)
    assert (folder / "tokenizer" / "tokenizer.json").exists() or (folder / "tokenizer" / "vocab.json").exists()
    s = man["sampler"]
    assert len(s["timesteps"]) == len(s["x_coef"]) == len(s["eps_coef"]) == s["num_steps"]
    assert not [p for p in folder.parent.iterdir() if "staging" in p.name]


@pytest.mark.parametrize("target", ["android-int8", "android-fp32"])
def test_each_pte_runs_in_the_executorch_runtime(bundles, target):
    from executorch.runtime import Runtime

    from lgc.runtime_harness.runners import register_quantized_kernels

    register_quantized_kernels()  # as an app links quantized_ops_lib when the manifest lists it
    folder, _ = bundles[target]
    man = manifest_mod.load(folder)
    for name, c in man["components"].items():
        method = Runtime.get().load_program(folder / c["file"]).load_method("forward")
        inputs = []
        for spec in c["inputs"]:
            dtype = getattr(torch, spec["dtype"])
            inputs.append(torch.zeros(spec["shape"], dtype=dtype) if dtype == torch.long else torch.randn(spec["shape"]))
        out = method.execute(inputs)[0]
        assert list(out.shape) == c["outputs"][0]["shape"] and torch.isfinite(out).all(), name
        # Methods other than forward (the U-Net's time_features) compute one of forward's inputs.
        forward_inputs = {spec["name"]: spec for spec in c["inputs"]}
        for mname, m in c.get("methods", {}).items():
            other = Runtime.get().load_program(folder / c["file"]).load_method(mname)
            got = other.execute([torch.full(spec["shape"], 500.0) for spec in m["inputs"]])[0]
            assert list(got.shape) == m["outputs"][0]["shape"] == forward_inputs[m["feeds"]]["shape"], (name, mname)
    assert set(man["components"]["unet"]["methods"]) == {"time_features"}


@pytest.mark.parametrize("target", ["android-int8", "android-fp32"])
def test_report_has_the_promised_fields(bundles, target):
    folder, report = bundles[target]
    on_disk = json.loads((folder / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["target"] == target and on_disk["reference"] == "golden_outputs/reference-student"
    for k in ("psnr_db_min", "psnr_db_mean", "ssim_min", "latency_ms_median"):
        assert isinstance(on_disk["end_to_end"][k], float)
    for c in COMPONENTS:
        comp = on_disk["components"][c]
        for k in ("file", "bytes", "latency_ms_median", "psnr_db_min", "delegate_subgraphs", "nondelegated_compute_ops"):
            assert k in comp, (c, k)
        assert comp["delegate_subgraphs"] >= 1
    passes = json.loads((folder / "passes.json").read_text())
    assert [p["pass"] for p in passes["passes"]] == passes["pipeline"]


# The spine issue's bars: 25 dB / 0.90 end to end, int8 <= 0.30x fp32 bytes.
# Measured on the reference model (README, "Measured figures"): 30.1 dB /
# 0.967 and 0.295x. PSNR is held at the bar; SSIM 0.01 under it, because
# XNNPACK picks different kernels on other x86 CPUs. The size bar is the
# issue's: what int8 leaves besides weights (per-channel scales, the graph
# description, constants' names) is what short_named_keys and the norm
# rewrites trimmed to get under it.
INT8_E2E_PSNR_MIN_DB = 25.0
INT8_E2E_SSIM_MIN = 0.89
INT8_TO_FP32_BYTES_MAX = 0.30


def test_int8_quality_against_fp16_goldens(bundles):
    e2e = bundles["android-int8"][1]["end_to_end"]
    assert e2e["psnr_db_min"] >= INT8_E2E_PSNR_MIN_DB, e2e
    assert e2e["psnr_db_mean"] >= 29.0, e2e
    assert e2e["ssim_min"] >= INT8_E2E_SSIM_MIN, e2e
    # Each int8 component on its own stays close to the goldens.
    for name, c in bundles["android-int8"][1]["components"].items():
        assert c["psnr_db_min"] >= 30.0, (name, c)


def test_fp32_components_match_goldens(bundles):
    report = bundles["android-fp32"][1]
    for c in COMPONENTS:
        assert report["components"][c]["psnr_db_min"] >= 35.0, (c, report["components"][c])
    assert report["end_to_end"]["psnr_db_min"] >= 35.0, report["end_to_end"]


def test_int8_bundle_is_much_smaller_than_fp32(bundles):
    int8 = bundles["android-int8"][1]["bundle_bytes"]
    fp32 = bundles["android-fp32"][1]["bundle_bytes"]
    assert int8 <= INT8_TO_FP32_BYTES_MAX * fp32, (int8, fp32, int8 / fp32)


def test_fusion_keeps_components_nearly_whole(bundles):
    """Norm/attention/upsampling rewrites and constant folding: the U-Net was 76 delegates and 201 ops outside.

    The U-Net now has nothing outside (its self-concatenation, timestep
    expand and an int scalar's cast were the last ops; see distinct_cat_inputs,
    expand_as_multiply, float_scalar_operands).
    What is left outside: the text encoder's token lookup (XNNPACK has no gather) and the reshape of its ids,
    and layout copies at inputs and outputs. The VAE decoder is one delegate since upsample_conv_as_deconv
    (its two high-resolution upsamples stayed outside before: 3 delegates).
    """
    for target in ("android-int8", "android-fp32"):
        comps = bundles[target][1]["components"]
        unet, text = comps["unet"], comps["text_encoder"]
        # One delegate for int8 too since unshare_dynamic_quantization (the K/V projections were a second one).
        assert unet["delegate_subgraphs"] == 1 and unet["nondelegated_compute_ops"] == 0, (target, unet)
        assert text["delegate_subgraphs"] == 1 and text["nondelegated_compute_ops"] <= 2, (target, text)
        vae = comps["vae_decoder"]
        assert vae["delegate_subgraphs"] == 1 and vae["nondelegated_compute_ops"] == 0, (target, vae)
        # Inside the U-Net's delegate: 213 layout transposes before the norm rewrites, 113-114 since
        # (attention head split/merge and the transformer blocks' channels-last boundaries).
        from lgc.targets.executorch.xnnpack_graph import delegate_ops

        transposes = delegate_ops((bundles[target][0] / unet["file"]).read_bytes())["StaticTranspose"]
        assert transposes <= 120, (target, transposes)


def test_int8_text_encoder_declares_the_quantized_kernels_it_needs(bundles):
    man = manifest_mod.load(bundles["android-int8"][0])
    assert man["components"]["text_encoder"]["kernel_libraries"] == ["portable", "quantized"]
    assert man["components"]["unet"]["kernel_libraries"] == ["portable"]


def test_tampered_bundle_is_rejected(bundles, tmp_path):
    import shutil

    folder = tmp_path / "b"
    shutil.copytree(bundles["android-fp32"][0], folder)
    man = manifest_mod.load(folder)
    pte = folder / "unet.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pte.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="unet.pte was altered after build"):
        verify_bundle_files(folder, man)
    newer = {**man, "schema_version": manifest_mod.SCHEMA_VERSION + 1}
    with pytest.raises(UsageError, match="newer than this lgc understands"):
        manifest_mod.validate(newer)
