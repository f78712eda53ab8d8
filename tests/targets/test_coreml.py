"""Core ML bundles: built, checked by their manifest, loaded by coremltools, and run by lgc's MIL interpreter."""

from __future__ import annotations

import json
import sys

import pytest
import torch

ct = pytest.importorskip("coremltools")

from lgc.compiler.bundle import size_bytes, verify_bundle_files  # noqa: E402
from lgc.compiler.manifest import validate  # noqa: E402
from lgc.runtime_harness.coreml.program import MilProgram  # noqa: E402

COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("target", ["ios-fp16", "ios-w4"])
def test_bundle_is_mlpackages_described_by_the_manifest(ios_bundles, target):
    folder, report = ios_bundles[target]
    manifest = manifest_of(folder)
    validate(manifest)
    verify_bundle_files(folder, manifest)  # the folder digests match
    for name in COMPONENTS:
        entry = manifest["components"][name]
        assert entry["runtime"] == "coreml" and entry["file"] == f"{name}.mlpackage"
        assert entry["bytes"] == size_bytes(folder / entry["file"])
        # The package spec loads in coremltools (no compile: that needs macOS), and opening it changes no byte.
        spec = ct.models.MLModel(str(folder / entry["file"]), skip_model_load=True).get_spec()
        verify_bundle_files(folder, manifest)
        assert [i.name for i in spec.description.input] == [i["name"] for i in entry["inputs"]]
    # Core ML has no int64: the manifest tells the app to feed int32 ids.
    assert manifest["components"]["text_encoder"]["inputs"][0]["dtype"] == "int32"


def test_ios_fp16_end_to_end_meets_apples_gate(ios_bundles):
    _, report = ios_bundles["ios-fp16"]
    assert report["end_to_end"]["psnr_db_min"] >= 35.0, report["end_to_end"]
    assert report["end_to_end"]["ssim_min"] >= 0.99


def test_ios_unet_is_in_the_neural_engine_form(ios_bundles):
    """transformer_as_bc1s reaches the program: projections are 1x1 convs, and no sequence is transposed per block."""
    folder, _ = ios_bundles["ios-fp16"]
    ops = MilProgram(folder / "unet.mlpackage").op_types()
    # Without the pass: 71 linear, 60 transpose, 24 matmul, 12 softmax. With it, only the time-embedding MLP
    # and the ResNet blocks' time projections stay linear (11), the text is transposed once for all blocks,
    # and each of the 12 attentions is split into its 4 heads (96 matmul, 48 softmax).
    assert ops.get("transpose", 0) <= 1, ops
    assert ops["linear"] <= 11 and ops["matmul"] == 96 and ops["softmax"] == 48, ops
    record = [p for p in json.loads((folder / "passes.json").read_text())["passes"] if p["pass"] == "transformer_as_bc1s"]
    assert record[0]["details"] == {"regions": {"unet": 6}, "attention": {"unet": 12}}, record


def test_ios_w4_is_palettized_and_smaller(ios_bundles):
    fp16, _ = ios_bundles["ios-fp16"]
    w4, report = ios_bundles["ios-w4"]
    program = MilProgram(w4 / "unet.mlpackage")
    with pytest.raises(KeyError):
        program.op_types()["constexpr_lut_to_dense"]  # evaluated at load, like Core ML: not a run-time step
    weights = lambda b, c: size_bytes(b / f"{c}.mlpackage" / "Data" / "com.apple.CoreML" / "weights")  # noqa: E731
    # 4-bit indices + per-group tables: the U-Net's weight file shrinks to about a third of fp16.
    assert weights(w4, "unet") <= 0.33 * weights(fp16, "unet")
    # All weights, the text encoder's token embedding (676 rows: 16 does not divide them) included: 0.296x measured.
    total = lambda b: sum(weights(b, c) for c in ("text_encoder", "unet", "vae_decoder"))  # noqa: E731
    assert total(w4) <= 0.31 * total(fp16)
    assert weights(w4, "text_encoder") <= 0.35 * weights(fp16, "text_encoder")
    # The whole bundle less so: each package's program (op list, names) does not shrink (0.38x measured).
    assert report["bundle_bytes"] <= 0.42 * sum(c["bytes"] for c in manifest_of(fp16)["components"].values())
    spec = ct.utils.load_spec(str(w4 / "unet.mlpackage"))
    fn = spec.mlProgram.functions["main"]
    ops = {op.type for op in fn.block_specializations[fn.opset].operations}
    assert fn.opset == "CoreML8" and "constexpr_lut_to_dense" in ops  # iOS 18 grouped-channel palettes


def test_compressed_weights_decode_exactly_as_coremltools_does(ios_bundles, tmp_path):
    """The interpreter's constexpr_* ops against coremltools' own decompression of the same package."""
    import coremltools.optimize.coreml as cto

    folder, _ = ios_bundles["ios-w4"]
    for name in ("unet", "vae_decoder"):
        package = folder / f"{name}.mlpackage"
        dense = cto.decompress_weights(ct.models.MLModel(str(package), skip_model_load=True))
        dense.save(str(tmp_path / f"{name}.mlpackage"))
        a, b = MilProgram(package), MilProgram(tmp_path / f"{name}.mlpackage")
        inputs = [torch.randn(i["shape"], generator=torch.Generator().manual_seed(k))
                  for k, i in enumerate(manifest_of(folder)["components"][name]["inputs"])]
        assert torch.equal(a(*inputs)[0], b(*inputs)[0]), name


def test_interpreter_agrees_with_eager_fp16_within_rounding(ios_bundles):
    """Interpreter vs the eager component in fp16: no further apart than fp16 eager is from fp32.

    Both round every intermediate to fp16 (in different places: Core ML fuses
    and reorders some ops), so they differ by rounding noise, of the size of
    fp16's own distance from fp32; an op with wrong semantics is orders of magnitude off.
    """
    from lgc.compiler.build import DEFAULT_MODEL
    from lgc.compiler.model_import import load_pipeline

    folder, _ = ios_bundles["ios-fp16"]
    model = load_pipeline(DEFAULT_MODEL, COMPONENTS, None)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "text_encoder": (model.components["text_encoder"].example_inputs[0],),
        "unet": (torch.randn(model.components["unet"].example_inputs[0].shape, generator=g), torch.tensor([500.0]),
                 torch.randn(model.components["unet"].example_inputs[2].shape, generator=g)),
        "vae_decoder": (torch.randn(model.components["vae_decoder"].example_inputs[0].shape, generator=g),),
    }
    rms = lambda t: t.float().pow(2).mean().sqrt().item()  # noqa: E731
    for name in COMPONENTS:
        module = model.components[name].module
        with torch.no_grad():
            fp32 = module(*inputs[name])
            fp16 = module.half()(*[t.half() if t.is_floating_point() else t for t in inputs[name]]).float()
            module.float()
        got = MilProgram(folder / f"{name}.mlpackage")(*inputs[name])[0].float()
        rounding = rms(fp16 - fp32)
        assert 0 < rms(got - fp16) <= 2.5 * rounding, (name, rms(got - fp16), rounding)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict exists only on macOS")
def test_interpreter_matches_core_ml_predict(ios_bundles):
    from lgc.runtime_harness.runners import CoreMLRunner

    folder, _ = ios_bundles["ios-fp16"]
    manifest = manifest_of(folder)
    for name in COMPONENTS:
        runner = CoreMLRunner(folder / f"{name}.mlpackage")
        assert runner.backend == "predict"
        inputs = [torch.randn(i["shape"]) if i["dtype"].startswith("float") else torch.zeros(i["shape"], dtype=torch.int32)
                  for i in manifest["components"][name]["inputs"]]
        got = MilProgram(folder / f"{name}.mlpackage")(*inputs)[0].float()
        torch.testing.assert_close(got, runner(*inputs), rtol=2e-2, atol=2e-2)


def test_lgc_check_passes_an_ios_bundle(ios_bundles):
    from lgc.compiler.check import check

    folder, _ = ios_bundles["ios-fp16"]
    result = check(folder)  # raises QualityGateError when a check of the ios-fp16 policy fails
    assert result["passed"] and len(result["checks"]) >= 5


@pytest.mark.parametrize("variant", ["sd2", "bksdm", "lcm", "taesd"])
def test_every_architecture_runs_in_the_interpreter(variant, tiny_pipeline, tmp_path):
    """SD-2 linear projections, block-removed U-Nets, LCM guidance embeddings, TAESD decoders: every op covered.

    The fp32 eager pipeline is the reference here (tiny models have no goldens): fp16 rounding alone
    costs 15-30 dB below it, an op computed wrongly costs everything.
    """
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    report = build(tiny_pipeline(variant), "ios-fp16", tmp_path, UI(quiet=True))
    assert report["end_to_end"]["psnr_db_min"] >= 50.0, report["end_to_end"]
    assert min(c["psnr_db_min"] for c in report["components"].values()) >= 50.0, report["components"]


def test_ios_et_is_one_core_ml_delegate_per_component(ios_bundles):
    """ExecuTorch with the Core ML delegate: the whole component inside it, run from the .pte's own payload."""
    folder, report = ios_bundles["ios-et"]
    manifest = manifest_of(folder)
    for name in COMPONENTS:
        c = report["components"][name]
        assert (c["delegate_subgraphs"], c["nondelegated_compute_ops"]) == (1, 0), (name, c)
        assert manifest["components"][name]["runtime"] == "executorch-coreml"
    # The delegate takes the U-Net's inputs in another order than the method (timestep first): the
    # runner maps them, or the images would be noise.
    assert report["end_to_end"]["psnr_db_min"] >= 35.0, report["end_to_end"]


def test_ios_et_runner_refuses_other_programs(bundles):
    from lgc.compiler.errors import UnsupportedModelError
    from lgc.runtime_harness.runners import ExecuTorchCoreMLRunner

    folder, _ = bundles["android-fp32"]
    with pytest.raises(UnsupportedModelError, match="not a single Core ML delegate call"):
        ExecuTorchCoreMLRunner(folder / "unet.pte")


@pytest.mark.parametrize("target", ["ios-fp16", "ios-et"])
def test_generate_runs_a_core_ml_bundle_and_says_in_what(ios_bundles, target):
    """`lgc.load_bundle(...).generate` on Core ML artifacts: the golden case's image, as the build's check scored it."""
    import lgc
    from lgc.runtime_harness.golden import GOLDEN_ROOT, read_golden_dir
    from lgc.runtime_harness.metrics import psnr_db

    folder, report = ios_bundles[target]
    bundle = lgc.load_bundle(folder)
    if sys.platform != "darwin":
        assert all("MIL interpreter" in r for r in bundle.runtimes.values()), bundle.runtimes
    case = read_golden_dir(GOLDEN_ROOT / "reference-student").cases[0]
    made = bundle.generate(case.prompt, seed=case.seed)
    got = torch.from_numpy(__import__("numpy").array(made.images[0])).permute(2, 0, 1).float().unsqueeze(0) / 255
    ref = case.image.unsqueeze(0) if case.image.dim() == 3 else case.image
    # The bundle's worst golden case, less 8-bit PNG rounding.
    assert psnr_db(got, ref, data_range=1.0) >= report["end_to_end"]["psnr_db_min"] - 1.0
    assert made.calls["unet"] == len(bundle.manifest["sampler"]["timesteps"])
