"""Load a diffusers pipeline folder into the components lgc compiles.

A folder is checked before any weight is read: it must hold a
``model_index.json`` and the sub-folders it names, and every architecture
option lgc cannot compile is named in one error line. Weights are then
loaded in fp32 and each component is wrapped in a module whose signature is
exactly what an app calls (see ``wrappers``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lgc.compiler.errors import ModelInputError, UnsupportedModelError
from lgc.compiler.wrappers import TextEncoderStep, UNetStep, VaeDecoderStep, VaeEncoderStep

SUPPORTED_DOWN_BLOCKS = {"CrossAttnDownBlock2D", "DownBlock2D"}
SUPPORTED_UP_BLOCKS = {"CrossAttnUpBlock2D", "UpBlock2D"}
SUPPORTED_MID_BLOCKS = {"UNetMidBlock2DCrossAttn", None}
SUPPORTED_VAES = {"AutoencoderKL", "AutoencoderTiny"}
SUPPORTED_TEXT_ENCODERS = {"CLIPTextModel"}
# Classes a diffusers folder may name that lgc refuses with a reason more useful than the list above.
TEXT_ENCODER_REASONS = {
    "CLIPTextModelWithProjection": "it is SDXL's second text encoder: StableDiffusionPipeline feeds the U-Net output [0] of its "
                                   "text encoder, which for this class is the pooled projection, not the hidden states",
}
# U-Net config keys whose non-default value changes the graph in a way lgc
# does not lower; each maps to the explanation shown to the user.
UNSUPPORTED_UNET_OPTIONS = {
    "addition_embed_type": "added conditioning (SDXL-style text_time embeddings)",
    "class_embed_type": "class-conditional embeddings",
    "encoder_hid_dim_type": "an encoder hidden-state projection (IF/Kandinsky-style)",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Component:
    """One graph an app calls: an eager wrapper, its static example inputs, and its captured graph."""

    name: str
    module: torch.nn.Module
    example_inputs: tuple
    input_names: list[str]
    output_names: list[str]
    source_class: str
    graph: torch.fx.GraphModule | None = None
    meta: dict = field(default_factory=dict)
    # Extra entry points shipped in the same artifact (e.g. the U-Net's ``time_features``,
    # see passes/fusion/fold_timestep_embedding.py), by method name.
    methods: dict[str, "Method"] = field(default_factory=dict)
    # The eager module's inputs, when a pass changed what the graph takes (``example_inputs``).
    source_inputs: tuple | None = None
    source_input_names: list[str] | None = None

    def restore_source_signature(self) -> None:
        """Back to the eager module's inputs and a single method, before the graph is captured again."""
        if self.source_inputs is not None:
            self.example_inputs, self.input_names = self.source_inputs, self.source_input_names
            self.source_inputs = self.source_input_names = None
        self.methods = {}


@dataclass
class Method:
    """A second graph of a component: the app calls it to compute the input ``feeds`` of ``forward``."""

    graph: torch.fx.GraphModule
    example_inputs: tuple
    input_names: list[str]
    output_names: list[str]
    feeds: str  # the forward input its output is
    replaces: str  # the component input it takes the place of (the app passes that value to this method instead)


@dataclass
class ImportedModel:
    path: Path
    sha256: str
    components: dict[str, Component]
    tokenizer: object
    scheduler_config: dict
    info: dict


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelInputError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelInputError(f"{path}: not valid JSON ({e})") from None


def folder_sha256(path: Path) -> str:
    """Hash of every config and weight file under ``path`` (names and bytes), order-independent."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def check_pipeline_folder(path: Path) -> dict:
    """Fail with one line if ``path`` is not a diffusers text-to-image pipeline lgc can read."""
    if not path.exists():
        raise ModelInputError(f"model folder not found: {path}")
    if not path.is_dir():
        raise ModelInputError(f"model path is not a folder: {path}")
    _check_confined(path)
    index_path = path / "model_index.json"
    if not index_path.exists():
        raise ModelInputError(f"not a diffusers pipeline folder (no model_index.json): {path}")
    index = _read_json(index_path)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if part not in index or not isinstance(index[part], list) or len(index[part]) != 2 or index[part][1] is None:
            raise ModelInputError(f"{index_path}: the pipeline has no '{part}' component")
        library = index[part][0]
        if library not in ("diffusers", "transformers"):
            # ["my_module", "UNet2DConditionModel"] is a class defined by code in the folder: lgc never runs that
            # code, and loading diffusers' class of the same name instead would compute something else.
            raise UnsupportedModelError(f"{part}: comes from {library!r}, code shipped in the model folder, which lgc does not run "
                                        f"(only diffusers and transformers classes are lowered)")
        if not (path / part).is_dir():
            raise ModelInputError(f"{path}: model_index.json names '{part}' but the folder {part}/ is missing")
    return index


def _check_confined(folder: Path) -> None:
    """Every file of a model folder resolves inside it, or, for a Hugging Face cache snapshot
    (``models--org--name/snapshots/<rev>/``, whose files are links to ``../../blobs/<hash>``), inside its repo's blobs."""
    root = folder.resolve()
    allowed = [root]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        allowed.append((folder.parent.parent / "blobs").resolve())
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if not entry.is_symlink():
                continue
            try:
                target = entry.resolve(strict=True)
            except (OSError, RuntimeError):
                raise ModelInputError(f"{entry}: a symbolic link that leads nowhere (missing target or a loop)") from None
            if entry.is_dir() or not any(target.is_relative_to(a) for a in allowed):
                raise ModelInputError(f"{entry}: a symbolic link out of the model folder (to {target}); "
                                      f"copy the files in, or point --model at a folder that holds them")


def check_unet_config(cfg: dict) -> None:
    for i, b in enumerate(cfg.get("down_block_types", [])):
        if b not in SUPPORTED_DOWN_BLOCKS:
            raise UnsupportedModelError(f"unet: down block {i} '{b}' is not supported (supported: {', '.join(sorted(SUPPORTED_DOWN_BLOCKS))})")
    for i, b in enumerate(cfg.get("up_block_types", [])):
        if b not in SUPPORTED_UP_BLOCKS:
            raise UnsupportedModelError(f"unet: up block {i} '{b}' is not supported (supported: {', '.join(sorted(SUPPORTED_UP_BLOCKS))})")
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in SUPPORTED_MID_BLOCKS:
        raise UnsupportedModelError(f"unet: mid block '{mid}' is not supported (supported: UNetMidBlock2DCrossAttn or none)")
    for key, what in UNSUPPORTED_UNET_OPTIONS.items():
        if cfg.get(key) is not None:
            raise UnsupportedModelError(f"unet: {key}={cfg[key]!r} ({what}) is not supported")
    if cfg.get("in_channels") != cfg.get("out_channels"):
        raise UnsupportedModelError(
            f"unet: in_channels={cfg.get('in_channels')} differs from out_channels={cfg.get('out_channels')} (inpainting/depth U-Nets are not supported)"
        )


def _class_of(index: dict, part: str, allowed: set[str]) -> str:
    cls = index[part][1]
    if part == "text_encoder" and cls in TEXT_ENCODER_REASONS:
        raise UnsupportedModelError(f"text_encoder: class '{cls}' is not supported in a StableDiffusionPipeline folder: "
                                    f"{TEXT_ENCODER_REASONS[cls]}")
    if cls not in allowed:
        raise UnsupportedModelError(f"{part}: class '{cls}' is not supported (supported: {', '.join(sorted(allowed))})")
    return cls


# torch's load_state_dict, which diffusers uses when accelerate is not installed (low_cpu_mem_usage off).
_TORCH_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) "
                                  r"from checkpoint, the shape in current model is (torch\.Size\(\[[^\]]*\]\))")


def _shape_mismatch(msg: str) -> str:
    """A loader's message about weights whose shapes differ from the config, as one line that names the first.

    diffusers says it two ways: with accelerate installed it checks shapes
    itself ("Cannot load <path> because <name> expected shape ..., but got
    ..." and advice about ignore_mismatched_sizes, which does not apply to a
    compiler); without, torch's load_state_dict lists every mismatch.
    """
    if "expected shape" in msg:
        msg = msg.split(" If you want to instead overwrite")[0]
        return "weights do not match the config: " + re.sub(r"^Cannot load \S* ?because ", "", msg)
    found = _TORCH_SIZE_MISMATCH.findall(msg)
    if not found:
        return msg
    name, got, expected = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"weights do not match the config: {name} expected shape {expected}, but got {got}{more}"


def _load(cls, folder: Path, part: str):
    try:  # safetensors whenever the folder has them: a pickle file beside them is never opened
        return cls.from_pretrained(folder / part, torch_dtype=torch.float32, local_files_only=True,
                                   use_safetensors=_has_safetensors(folder, part))
    except (UnsupportedModelError, ModelInputError):
        raise
    except Exception as e:  # diffusers/transformers raise many kinds; all mean the files are broken
        msg = _shape_mismatch(" ".join(str(e).split()))
        if len(msg) > 300:
            msg = msg[:300] + "..."
        raise ModelInputError(f"{part}: cannot load weights from {folder / part}: {type(e).__name__}: {msg}") from None


def _has_safetensors(folder: Path, part: str) -> bool:
    return any(f.name.endswith(".safetensors") for f in (folder / part).iterdir())


def _check_weight_files(folder: Path, part: str, allow_pickle: bool) -> None:
    files = [f for f in (folder / part).iterdir() if f.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise ModelInputError(f"{part}: no weight file (*.safetensors or *.bin) in {folder / part}")
    if not allow_pickle and not _has_safetensors(folder, part):
        # A pickle can run code when unpickled; diffusers and transformers load it with torch.load(weights_only=True),
        # which is a guard of torch's, not a format. Only a user who trusts the folder opts in.
        raise ModelInputError(f"{part}: weights are pickle files ({files[0].name}), which lgc opens only for a folder you trust: "
                              f"--allow-pickle (loaded with weights_only=True), or convert them to safetensors")


def load_pipeline(path: Path, components: tuple[str, ...], image_size: int | None, cfg_batch: bool | None = None,
                  allow_pickle: bool = False) -> ImportedModel:
    """Read ``path`` into the requested components with static example inputs.

    ``image_size`` defaults to the U-Net's ``sample_size`` times the VAE's
    downsampling; ``cfg_batch`` (classifier-free guidance as one batch-2
    U-Net call) defaults to "yes unless the U-Net takes a guidance embedding".
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    index = check_pipeline_folder(path)
    unet_cfg = _read_json(path / "unet" / "config.json")
    if index["unet"][1] != "UNet2DConditionModel":
        raise UnsupportedModelError(f"unet: class '{index['unet'][1]}' is not supported (supported: UNet2DConditionModel)")
    check_unet_config(unet_cfg)
    vae_cls = _class_of(index, "vae", SUPPORTED_VAES)
    te_cls = _class_of(index, "text_encoder", SUPPORTED_TEXT_ENCODERS)
    for part in ("unet", "vae", "text_encoder"):
        _check_weight_files(path, part, allow_pickle)
    # diffusers' pipelines build the scheduler class model_index.json names, whatever the config's _class_name says.
    sched_cfg = {**_read_json(path / "scheduler" / "scheduler_config.json"), "_class_name": index["scheduler"][1]}

    unet = _load(UNet2DConditionModel, path, "unet").eval()
    vae = _load({"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}[vae_cls], path, "vae").eval()
    te = _load({"CLIPTextModel": CLIPTextModel}[te_cls], path, "text_encoder").eval()
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except Exception as e:
        raise ModelInputError(f"tokenizer: cannot load from {path / 'tokenizer'}: {type(e).__name__}: {e}") from None

    down_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    vae_factor = 8 if vae_cls == "AutoencoderTiny" else 2 ** (len(vae.config.block_out_channels) - 1)
    size = image_size or unet.config.sample_size * vae_factor
    if size % (vae_factor * down_factor):
        raise ModelInputError(
            f"image size {size} is not divisible by {vae_factor * down_factor} (VAE factor {vae_factor} x U-Net downsampling {down_factor})"
        )
    guidance_dim = unet.config.time_cond_proj_dim
    if cfg_batch is None:
        cfg_batch = guidance_dim is None
    text_len = min(tokenizer.model_max_length, te.config.max_position_embeddings)
    lat = size // vae_factor
    lat_ch = unet.config.in_channels
    unet_batch = 2 if cfg_batch else 1
    text_dim = te.config.hidden_size
    if unet.config.cross_attention_dim != text_dim:
        raise UnsupportedModelError(
            f"unet: cross_attention_dim={unet.config.cross_attention_dim} does not match the text encoder's hidden size {text_dim}"
        )

    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    factories = {
        "text_encoder": lambda: Component(
            "text_encoder", TextEncoderStep(te), (torch.zeros(1, text_len, dtype=torch.long),),
            ["input_ids"], ["last_hidden_state"], te_cls,
        ),
        "unet": lambda: Component(
            "unet", UNetStep(unet),
            (torch.randn(unet_batch, lat_ch, lat, lat), torch.tensor([500.0]), torch.randn(unet_batch, text_len, text_dim))
            + ((torch.randn(unet_batch, guidance_dim),) if guidance_dim else ()),
            ["sample", "timestep", "encoder_hidden_states"] + (["timestep_cond"] if guidance_dim else []),
            ["noise_pred"], "UNet2DConditionModel",
        ),
        "vae_decoder": lambda: Component(
            "vae_decoder", VaeDecoderStep(vae, scale), (torch.randn(1, lat_ch, lat, lat),), ["latents"], ["image"], vae_cls,
        ),
        "vae_encoder": lambda: Component(
            "vae_encoder", VaeEncoderStep(vae, scale), (torch.rand(1, 3, size, size),), ["image"], ["latents"], vae_cls,
        ),
    }
    unknown = [c for c in components if c not in factories]
    if unknown:
        raise ModelInputError(f"unknown component(s) {unknown}; lgc knows {sorted(factories)}")
    info = {
        "image_size": size,
        "latent_shape": [lat_ch, lat, lat],
        "vae_scale_factor": vae_factor,
        "latent_scaling_factor": scale,
        "cfg_batch": cfg_batch,
        "guidance_embedding_dim": guidance_dim,
        "text_max_length": text_len,
        "text_hidden_size": text_dim,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "classes": {"unet": "UNet2DConditionModel", "vae": vae_cls, "text_encoder": te_cls},
    }
    return ImportedModel(path, folder_sha256(path), {c: factories[c]() for c in components}, tokenizer, sched_cfg, info)
