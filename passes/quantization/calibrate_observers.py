"""PT2E step 2 of 3: feed the observers the real inputs of the floating-point pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, has_observers, register_pass


def stratified(samples: list, steps: int, per_step: int) -> list:
    """``per_step`` samples of every timestep, each from a different run, rotating through the runs.

    Samples are recorded run after run, ``steps`` per run, so sample ``r * steps + i``
    is run ``r`` at step ``i``.
    """
    runs = len(samples) // steps
    if per_step == 0 or per_step >= runs:
        return samples
    picked = []
    for i in range(steps):
        for j in range(per_step):
            r = (i + j * runs // per_step) % runs
            picked.append(samples[r * steps + i])
    return picked


@register_pass
class CalibrateObservers(Pass):
    """Run recorded component inputs through the observed graphs.

    Before: graphs with observers that have seen nothing.
    After:  the same graphs with observer ranges set from calibration data.
    The inputs come from the fp32 pipeline running the shipped sampler (see
    ``lgc.calibration.collect``), so each U-Net timestep the app visits is
    represented. Options: how many prompts and seeds, and a cap on the
    U-Net samples per timestep.
    """

    name = "calibrate_observers"
    group = "quantization"

    @dataclass(frozen=True)
    class Config:
        prompts_file: str = ""  # one prompt a line; empty: lgc's bundled calibration prompts
        seeds: tuple = (1000, 1001)  # initial-noise seeds per prompt (not the golden seeds)
        max_prompts: int = 14  # use at most this many prompts of the file
        # U-Net samples per visited timestep, spread over the prompt/seed runs
        # (0: all). XNNPACK's activation observer is a histogram, which costs
        # about a second per U-Net call at this size: the cap keeps every
        # timestep represented at a fraction of the time.
        unet_samples_per_timestep: int = 8

        def __post_init__(self):
            if self.max_prompts < 1 or not self.seeds or self.unet_samples_per_timestep < 0:
                raise ValueError("calibration needs at least one prompt and one seed")
            if self.prompts_file:  # read now, when the pipeline is resolved: a bad file fails before any work
                from lgc.calibration.collect import read_prompts

                read_prompts(self.prompts_file)

    def run(self, state, config: Config) -> PassResult:
        from lgc.calibration.collect import DEFAULT_PROMPTS, collect, read_prompts

        targets = {n: c for n, c in state.model.components.items() if c.graph is not None and has_observers(c.graph)}
        if not targets:
            return PassResult(False, {"calibrated": []})
        counts, observed = {}, {}
        # Weights-only observation: one run on the example inputs sets every observer it has.
        weights_only = [n for n, c in targets.items() if not needs_data(c.graph)]
        with torch.no_grad():
            for name in weights_only:
                targets[name].graph(*targets[name].example_inputs)
                observed[name], counts[name] = "weights only", 0
        targets = {n: c for n, c in targets.items() if n not in weights_only}
        if not targets:
            return PassResult(True, {"samples": counts, "observers": observed})
        prompts = read_prompts(config.prompts_file or DEFAULT_PROMPTS)[: config.max_prompts]
        calib = collect(state.model, state.sampler.to_json(), prompts, list(config.seeds), state.cache_dir, state.progress_calibration)
        with torch.no_grad():
            for name, comp in targets.items():
                samples = calib.inputs.get(name, [])
                if name == "unet":
                    samples = stratified(samples, state.sampler.num_steps, config.unet_samples_per_timestep)
                if not samples:
                    raise ValueError(f"no calibration inputs recorded for {name}")
                observed[name] = observe(comp.graph, samples, calib.key, state.cache_dir)
                counts[name] = len(samples)
        return PassResult(True, {"samples": counts, "prompts": len(prompts), "seeds": list(config.seeds),
                                 "cache": "hit" if calib.cached else "miss", "key": calib.key, "observers": observed})


def needs_data(gm: torch.fx.GraphModule) -> bool:
    """Whether any observer of ``gm`` records statistics of activations (and so needs calibration inputs).

    A dynamically quantized component (the U-Net and text encoder by default)
    has only observers of its weights, which are constants, and placeholder
    observers on its activations, which record nothing: their scales are
    computed at run time. Feeding such a graph calibration samples changes no
    observer; at SD-1.5 size it cost 94 s for 8 samples.
    """
    from torchao.quantization.pt2e.observer import PlaceholderObserver

    observers = _observers(gm)
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in observers:
            continue
        observed = node.args[0] if node.args else None
        if isinstance(observers[node.target], PlaceholderObserver) or (isinstance(observed, torch.fx.Node) and observed.op == "get_attr"):
            continue
        return True
    return False


def _observers(gm) -> dict:
    return {n: m for n, m in gm.named_modules() if "activation_post_process" in n and "." not in n}


def observe(gm, samples: list, calib_key: str, cache_dir) -> str:
    """Run ``samples`` through the observed graph, or restore the observer states a previous build saved.

    XNNPACK's histogram observers make this the slowest step of a warm
    build; their final states are a function of the observed graph and the
    samples alone, so they are cached under a digest of both.
    """
    from pathlib import Path

    from lgc.compiler.artifact_cache import graph_digest

    path = None
    if cache_dir is not None:
        key = graph_digest(gm, {"calibration": calib_key, "samples": len(samples)})
        path = Path(cache_dir) / f"observers-{key}.pt"
        if path.is_file():
            states = torch.load(path)
            for n, m in _observers(gm).items():
                # Buffers replaced, not copied into: a fresh histogram observer's buffers have other
                # sizes than a fed one's and are not resizable (load_state_dict fails on them).
                for k, v in states[n].items():
                    m._buffers[k] = v.clone()
            return "restored"
    for args in samples:
        gm(*args)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({n: m.state_dict() for n, m in _observers(gm).items()}, tmp)
        tmp.replace(path)
    return "observed"
