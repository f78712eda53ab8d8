"""Images from a bundle: what ``lgc generate`` and ``lgc.load_bundle(...).generate(...)`` do.

The bundle is verified first (every file at its sha256, nothing unlisted, no
path outside: ``verify_bundle_files``), then its artifacts are loaded in their
own runtimes (ExecuTorch, TVM; Core ML through ``predict`` on macOS and lgc's
MIL interpreter elsewhere) and the manifest's loop runs, the one an app runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lgc.compiler import manifest as manifest_mod
from lgc.compiler.bundle import verify_bundle_files
from lgc.compiler.errors import UsageError


@dataclass
class Generation:
    images: list  # PIL images, one per seed
    seeds: list[int]
    timings_ms: dict = field(default_factory=dict)  # per component: total milliseconds over the generation(s)
    calls: dict = field(default_factory=dict)  # per component: how many times it ran


def runtime_names(manifest: dict) -> dict[str, str]:
    """What runs each component on this machine, in words."""
    out = {}
    for name, c in manifest["components"].items():
        if c["runtime"] in ("coreml", "executorch-coreml"):
            # ios-et: the .pte is one Core ML delegate call; its payload runs as a Core ML model would.
            inside = " on the .pte's Core ML delegate payload" if c["runtime"] == "executorch-coreml" else ""
            out[name] = (f"Core ML's predict{inside}" if sys.platform == "darwin"
                         else f"lgc's MIL interpreter{inside} (Core ML's predict needs macOS)")
        else:
            out[name] = {"executorch": "the ExecuTorch runtime", "tvm": "the TVM runtime"}.get(c["runtime"], c["runtime"])
    return out


class _Timed:
    def __init__(self, fn, name: str, gen: "LoadedBundle"):
        self.fn, self.name, self.gen = fn, name, gen

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.fn(*args)
        self.gen._ms[self.name] = self.gen._ms.get(self.name, 0.0) + (time.perf_counter() - t) * 1000
        self.gen._calls[self.name] = self.gen._calls.get(self.name, 0) + 1
        return out


class LoadedBundle:
    """A verified bundle with its artifacts loaded: call ``generate`` as often as you like."""

    def __init__(self, path: Path):
        from lgc.runtime_harness.harness import open_bundle

        self.path = Path(path)
        self.manifest = manifest_mod.load(self.path)
        verify_bundle_files(self.path, self.manifest)  # before anything of the bundle is loaded
        twin = (self.manifest.get("verified_with") or {}).get("target")
        if twin:
            raise UsageError(f"{self.manifest['target']} artifacts do not run on this machine (they are for the phone); "
                             f"generate with a {twin} bundle built from the same model")
        self._ms, self._calls = {}, {}
        fns, self.tokenizer = open_bundle(self.path, self.manifest)
        self.fns = {n: _Timed(f, n, self) for n, f in fns.items()}
        self.runtimes = runtime_names(self.manifest)

    def generate(self, prompt: str, seed: int = 0, guidance: float | None = None, negative: str = "", count: int = 1,
                 progress=None) -> Generation:
        """``count`` images of ``prompt`` from seeds ``seed``, ``seed + 1``, ...; ``progress(done, total)`` per U-Net step."""
        from lgc.calibration.collect import guidance_embedding, initial_noise
        from lgc.runtime_harness.harness import timestep_cond
        from lgc.runtime_harness.loop import generate, to_pil, tokenize

        if count < 1:
            raise UsageError(f"-n must be at least 1, got {count}")
        m = self.manifest
        mode = m["guidance"]["mode"]
        sampler = dict(m["sampler"])
        tcond = timestep_cond(m)
        if guidance is not None:
            if mode == "cfg_batch":
                sampler["guidance_scale"] = float(guidance)
            elif mode == "embedding":  # an LCM-style U-Net takes the scale as an input embedding
                tcond = guidance_embedding(float(guidance), len(m["guidance"]["timestep_cond"]))
            else:
                raise UsageError("this bundle's U-Net takes no guidance (guidance mode 'none'); drop --guidance")
        if negative and mode != "cfg_batch":
            raise UsageError(f"--negative needs classifier-free guidance; this bundle's guidance mode is '{mode}'")
        L = m["tokenizer"]["max_length"]
        ids = tokenize(self.tokenizer, prompt, L)
        uncond = tokenize(self.tokenizer, negative or m["tokenizer"]["uncond_prompt"], L)
        shape = m["latent"]["shape"][1:]
        self._ms, self._calls = {}, {}
        images, seeds = [], [seed + k for k in range(count)]
        steps = len(sampler["timesteps"])
        for k, s in enumerate(seeds):
            def on_unet(i, _inp, k=k):
                if progress:
                    progress(k * steps + i + 1, count * steps)

            res = generate(sampler, self.fns["text_encoder"], self.fns["unet"], self.fns["vae_decoder"], ids, uncond,
                           initial_noise(s, shape), mode == "cfg_batch", timestep_cond=tcond, on_unet=on_unet, noise_seed=s)
            images.append(to_pil(res.image))
        return Generation(images, seeds, {n: round(v, 2) for n, v in self._ms.items()}, dict(self._calls))


def output_paths(out: Path, count: int) -> list[Path]:
    """``out`` for one image; ``stem-0.png``, ``stem-1.png``, ... beside it for several."""
    out = Path(out)
    if count < 1:
        raise UsageError(f"-n must be at least 1, got {count}")
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o must name a .png file, got {out}")
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(count)]


def save_all(images: list, paths: list[Path]) -> None:
    """Each PNG written beside its name and renamed into place: no half-written file, ever."""
    written, tmp = [], None
    try:
        for img, path in zip(images, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.partial")
            img.save(tmp, format="PNG")
            tmp.replace(path)
            written.append(path)
    except OSError as e:
        for p in written + ([tmp] if tmp is not None else []):
            p.unlink(missing_ok=True)
        raise UsageError(f"cannot write {paths[len(written)]}: {e.strerror or e}") from None
