"""Import: each architecture real distilled models use is captured with torch.export at static shapes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lgc.compiler.build import export_components
from lgc.compiler.errors import ModelInputError, UnsupportedModelError
from lgc.compiler.model_import import load_pipeline

ALL = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@pytest.mark.parametrize("variant", ["sd1", "sd2", "bksdm", "lcm", "taesd"])
def test_variant_exports_and_matches_eager(tiny_pipeline, variant):
    model = load_pipeline(tiny_pipeline(variant), ALL, image_size=None)
    export_components(model)
    for name, comp in model.components.items():
        with torch.no_grad():
            want = comp.module(*comp.example_inputs)
            got = comp.graph(*comp.example_inputs)
        got = got[0] if isinstance(got, (tuple, list)) else got
        assert got.shape == want.shape, name
        assert torch.allclose(got, want, atol=1e-5), f"{variant}/{name}: exported graph differs from eager"
    unet = model.components["unet"]
    if variant == "lcm":
        # Guidance-distilled: batch 1 and the guidance embedding as an input.
        assert unet.input_names[-1] == "timestep_cond" and unet.example_inputs[0].shape[0] == 1
        assert not model.info["cfg_batch"]
    else:
        assert unet.input_names == ["sample", "timestep", "encoder_hidden_states"] and unet.example_inputs[0].shape[0] == 2
    if variant == "bksdm":
        assert model.components["unet"].module.unet.mid_block is None
    img = model.components["vae_decoder"].module(*model.components["vae_decoder"].example_inputs)
    assert img.shape[-1] == model.info["image_size"] and 0 <= float(img.min()) and float(img.max()) <= 1


def test_image_size_sets_static_shapes(tiny_pipeline):
    model = load_pipeline(tiny_pipeline("sd1"), ("unet",), image_size=128)
    assert model.components["unet"].example_inputs[0].shape == (2, 4, 16, 16)


def test_image_size_not_divisible(tiny_pipeline):
    with pytest.raises(ModelInputError, match="not divisible by 16"):
        load_pipeline(tiny_pipeline("sd1"), ("unet",), image_size=120)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(down_block_types=["SimpleCrossAttnDownBlock2D", "DownBlock2D"]), "down block 0 'SimpleCrossAttnDownBlock2D'"),
        (dict(up_block_types=["UpBlock2D", "AttnUpBlock2D"]), "up block 1 'AttnUpBlock2D'"),
        (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid block 'UNetMidBlock2DSimpleCrossAttn'"),
        (dict(addition_embed_type="text_time"), "addition_embed_type"),
        (dict(in_channels=9), "inpainting"),
    ],
)
def test_unsupported_architecture_names_the_piece(tiny_pipeline, tmp_path, edit, match):
    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    _edit_json(folder / "unet" / "config.json", **edit)
    with pytest.raises(UnsupportedModelError, match=match):
        load_pipeline(folder, ALL, None)


def test_unsupported_vae_class(tiny_pipeline, tmp_path):
    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    _edit_json(folder / "model_index.json", vae=["diffusers", "AutoencoderKLTemporalDecoder"])
    with pytest.raises(UnsupportedModelError, match="vae: class 'AutoencoderKLTemporalDecoder'"):
        load_pipeline(folder, ALL, None)


def test_missing_and_non_diffusers_folders(tmp_path):
    with pytest.raises(ModelInputError, match="model folder not found"):
        load_pipeline(tmp_path / "nope", ALL, None)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelInputError, match="no model_index.json"):
        load_pipeline(tmp_path / "plain", ALL, None)


def test_truncated_weights_are_model_input_errors(tiny_pipeline, tmp_path):
    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    w = next((folder / "unet").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelInputError, match="unet: cannot load weights"):
        load_pipeline(folder, ALL, None)


def test_weights_not_matching_config(tiny_pipeline, tmp_path):
    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    _edit_json(folder / "unet" / "config.json", block_out_channels=[16, 48])
    with pytest.raises(ModelInputError, match="unet: cannot load weights"):
        load_pipeline(folder, ALL, None)


def _to_pickle(folder: Path, part: str, cls) -> None:
    """Re-save one part as a pickle checkpoint (*.bin) and drop its safetensors."""
    model = cls.from_pretrained(folder / part)
    for f in (folder / part).glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(folder / part, safe_serialization=False)


def test_pickle_weights_need_allow_pickle(tiny_pipeline, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    _to_pickle(folder, "unet", UNet2DConditionModel)
    assert list((folder / "unet").glob("*.bin")) and not list((folder / "unet").glob("*.safetensors"))
    with pytest.raises(ModelInputError, match="unet: weights are pickle files .* --allow-pickle"):
        load_pipeline(folder, ALL, None)
    trusted = load_pipeline(folder, ALL, None, allow_pickle=True)
    safe = load_pipeline(tiny_pipeline("sd1"), ALL, None)
    a, b = trusted.components["unet"].module.state_dict(), safe.components["unet"].module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pickle_beside_safetensors_is_never_opened(tiny_pipeline, tmp_path):
    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle at all")
    load_pipeline(folder, ALL, None)  # loads the safetensors; the junk .bin would fail if it were read


def test_a_symlink_out_of_the_model_folder_is_refused(tiny_pipeline, tmp_path):
    folder = _copy(tiny_pipeline("sd1"), tmp_path / "m")
    cfg = folder / "unet" / "config.json"
    outside = tmp_path / "elsewhere.json"
    outside.write_text(cfg.read_text())
    cfg.unlink()
    cfg.symlink_to(outside)
    with pytest.raises(ModelInputError, match="unet/config.json: a symbolic link out of the model folder"):
        load_pipeline(folder, ALL, None)
    cfg.unlink()
    cfg.symlink_to(tmp_path / "missing.json")
    with pytest.raises(ModelInputError, match="leads nowhere"):
        load_pipeline(folder, ALL, None)


def test_a_hugging_face_cache_snapshot_loads(tiny_pipeline, tmp_path):
    """models--org--name/snapshots/<rev>/ holds links to ../../blobs/<hash>: the one layout whose links leave the folder."""
    import hashlib
    import os

    repo = tmp_path / "hub" / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    blobs.mkdir(parents=True)
    src = tiny_pipeline("sd1")
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    model = load_pipeline(snap, ALL, None)
    assert set(model.components) == set(ALL)
