"""Golden reference cases: read from ``golden_outputs/`` (or computed from the eager model when none exist)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

GOLDEN_ROOT = Path(__file__).resolve().parent.parent / "golden_outputs"


@dataclass
class GoldenCase:
    prompt: str
    seed: int
    noise: torch.Tensor
    image: torch.Tensor
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    unet: dict = field(default_factory=dict)  # step -> (sample, timestep, out)


@dataclass
class GoldenSet:
    name: str
    source: str  # "golden_outputs/<name>" or "eager-fp32"
    manifest: dict
    cases: list[GoldenCase]


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a).astype(np.float32))


def read_golden_dir(folder: Path) -> GoldenSet:
    man = json.loads((folder / "manifest.json").read_text())
    cases = []
    for c in man["cases"]:
        z = np.load(folder / c["file"])
        unet = {i: (_t(z[f"unet_sample_{i}"]), _t(z[f"unet_timestep_{i}"]), _t(z[f"unet_out_{i}"])) for i in man["pinned_steps"]}
        cases.append(GoldenCase(c["prompt"], c["seed"], _t(z["noise"]), _t(z["image"]), _t(z["latents"]), _t(z["prompt_embeds"]), unet))
    return GoldenSet(man["name"], f"golden_outputs/{folder.name}", man, cases)


def find_goldens(model_sha: str, root: Path = GOLDEN_ROOT, steps: int | None = None) -> Path | None:
    """The golden folder recorded for exactly this model (by sha256 of its files), if any.

    A model can have several (the stock 20-step pipeline, a 50-step
    reference): ``steps`` picks one; without it the stock-step set wins.
    """
    from lgc.compiler.golden import GOLDEN_STEPS

    found = []
    for man in sorted(Path(root).glob("*/manifest.json")):
        try:
            data = json.loads(man.read_text())
            if data["model"]["sha256"] == model_sha and (steps is None or data.get("steps") == steps):
                found.append((data.get("steps") != GOLDEN_STEPS, man.parent.name, man.parent))
        except (KeyError, TypeError, json.JSONDecodeError):
            continue
    return min(found)[2] if found else None


def stale_goldens(root: Path, models: dict[str, Path]) -> list[str]:
    """Golden sets whose recorded model hash no longer matches the model folder they name."""
    from lgc.compiler.model_import import folder_sha256

    stale = []
    for man_path in sorted(Path(root).glob("*/manifest.json")):
        man = json.loads(man_path.read_text())
        model = models.get(man["name"])
        if model is None:
            stale.append(f"{man['name']}: no model folder known for it")
        elif folder_sha256(model) != man["model"]["sha256"]:
            stale.append(f"{man['name']}: model files changed since the goldens were made (run `lgc golden`)")
    return stale
