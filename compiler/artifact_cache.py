"""Content-addressed cache of lowered artifacts: a component whose graph, weights and target did not change is not lowered again.

The key is a digest of what the emitter receives — the component's graph
after every pass (its code), every tensor it holds (weights, quantization
parameters, constants), its input shapes — and of what the emitter does with
it (runtime, emit options, precision) and the versions of lgc and of the
toolchain that would lower it. Keying on the graph after the passes, not on
the build's options, is what makes a change re-lower only the components it
actually changed: a pass option that leaves the VAE's graph as it was leaves
the VAE cached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import metadata
from pathlib import Path

import torch

# Bumped when what an entry records changes (3: delegation summaries count layout copies of program inputs
# and outputs as glue; 4, 5: emitter changes, before the key held emitter_source_digest()).
CACHE_VERSION = 5
TOOLCHAIN = ("torch", "executorch", "coremltools")


def _versions() -> dict:
    out = {}
    for dist in TOOLCHAIN:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # A copy: numpy sharing a tensor's storage makes it non-resizable, and observers resize theirs.
    t = t.detach().cpu().clone().contiguous()
    try:
        return t.view(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # dtypes without a byte view (quantized tensors): their float values
        return t.dequantize().float().numpy().tobytes() if t.is_quantized else t.float().numpy().tobytes()


def graph_tensors(gm) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads: parameters, buffers, and get_attr constants (quantized weights, scales)."""
    out = dict(gm.state_dict(keep_vars=False))
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                out[node.target] = obj
    return out


def graph_digest(gm, context: dict) -> str:
    """sha256 of ``context`` (JSON), the graph's code and every tensor it reads, with the toolchain versions."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "toolchain": _versions(), **context}, sort_keys=True, default=str).encode())
    h.update(gm.code.encode())
    for name, t in sorted(graph_tensors(gm).items()):
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()[:32]


def emitter_source_digest() -> str:
    """sha256 of lgc's emitter code (every ``.py`` under ``lgc.targets``).

    The lowering depends on that code as much as on the graph: the patches
    lgc applies to executorch while lowering live there. lgc's version
    string does not change with every edit of a development install, so
    without this a changed emitter could be served an artifact the old one
    lowered.
    """
    from lgc import targets

    h = hashlib.sha256()
    root = Path(targets.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def component_key(component, profile, lgc_version: str, extra: dict | None = None) -> str:
    """``extra``: what else the emitter reads (a runtime's ``KEY_MATERIAL``, e.g. TVM's tuning records)."""
    methods = getattr(component, "methods", None)
    return graph_digest(component.graph, {
        "lgc": lgc_version, "emitter": emitter_source_digest(), "component": component.name, "runtime": profile.runtime,
        "precision": profile.precision, "emit": profile.emit_options, **({"extra": extra} if extra else {}),
        "inputs": _input_specs(component.example_inputs),
        # The artifact holds the component's extra methods too (fold_timestep_embedding's time_features).
        **({"methods": {name: graph_digest(m.graph, {"inputs": _input_specs(m.example_inputs)}) for name, m in sorted(methods.items())}}
           if methods else {})})


def _input_specs(inputs) -> list:
    return [[list(t.shape), str(t.dtype)] for t in inputs]


class ArtifactCache:
    """``root/<key>/``: the artifact (file or folder) and ``artifact.json``, what its emitter reported."""

    def __init__(self, root: Path | None):
        self.workspace = Path(root) if root else None  # the build cache, which emitters may keep state in
        self.root = Path(root) / "artifacts" if root else None

    def get(self, key: str, stage: Path) -> dict | None:
        """Copy a cached artifact into ``stage`` and return its emitter report, or None on a miss."""
        if self.root is None:
            return None
        entry = self.root / key
        meta = entry / "artifact.json"
        if not meta.is_file():
            return None
        art = json.loads(meta.read_text())
        src = entry / art["file"]
        if not src.exists():
            return None
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, Path(stage) / art["file"])
        return art

    def put(self, key: str, stage: Path, art: dict) -> None:
        """Store a freshly lowered artifact; written to a temporary folder and renamed, so a crash leaves no half entry."""
        if self.root is None:
            return
        entry = self.root / key
        if entry.exists():
            return
        tmp = self.root / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        src = Path(stage) / art["file"]
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / art["file"])
        (tmp / "artifact.json").write_text(json.dumps(art, indent=2) + "\n")
        tmp.rename(entry)
