"""Intel Neural Compressor's accuracy-driven autotune, driving lgc's own XNNPACK quantization.

``search_mixed_precision`` with ``strategy="inc"`` hands the search to
``neural_compressor.torch.quantization.autotune``: INC expands a tuning
space from a config's list-valued parameters, quantizes the model with each
point through its algorithm registry, evaluates it with the function it is
given, and stops at the first point within the tolerable loss of the fp32
baseline.

INC's own torch algorithms target x86 (IPEX, Inductor's quantizer), not
XNNPACK, so lgc registers one more algorithm with INC (``lgc_xnnpack_w8a8``):
a config with two tunable parameters, ``fp32_layers`` (how many of the most
sensitive layers stay fp32) and ``dynamic`` (run-time or calibrated
activation ranges), and an entry that quantizes a PT2E graph with
``XNNPACKQuantizer`` exactly as the build would. The evaluation is lgc's
end-to-end PSNR on held-out prompts, given to INC as the fraction of the
budget reached (capped at 1): the fp32 baseline scores 1, so a tolerable
loss of 0 accepts exactly the points that meet the budget.
"""

# No ``from __future__ import annotations`` here: INC reads the config's __init__ annotations
# as types to tell tunable (list-valued) parameters from fixed ones.
from collections import OrderedDict
from typing import Callable

ALGO = "lgc_xnnpack_w8a8"
_SESSION: dict = {}  # the quantize function of the autotune in progress (INC calls the entry without context)
_CONFIG_CLASS = None


def _register():
    """Register lgc's config and algorithm with INC's torch registries (once per process)."""
    global _CONFIG_CLASS
    if _CONFIG_CLASS is not None:
        return _CONFIG_CLASS
    from neural_compressor.common.base_config import register_config
    from neural_compressor.torch.quantization.config import TorchBaseConfig
    from neural_compressor.torch.utils.utility import register_algo

    @register_config(framework_name="torch", algo_name=ALGO)
    class LgcXnnpackConfig(TorchBaseConfig):
        """A point of lgc's tuning space: how many ranked layers stay fp32, and the activation mode."""

        name = ALGO
        supported_configs = []

        def __init__(self, fp32_layers: int = 0, dynamic: bool = True, white_list=None):
            super().__init__(white_list=white_list)
            self.fp32_layers = fp32_layers
            self.dynamic = dynamic
            self._post_init()

        @classmethod
        def register_supported_configs(cls):
            cls.supported_configs = []

        @staticmethod
        def get_model_info(model, example_inputs=None):
            return None  # the whole graph is one unit: layers are chosen by rank, not by INC's op names

        def to_config_mapping(self, config_list=None, model_info=None):
            return OrderedDict({self.name: self})

        @classmethod
        def get_config_set_for_tuning(cls):
            return cls(fp32_layers=[0, 1, 2, 4, 8], dynamic=[True, False])

    @register_algo(name=ALGO)
    def lgc_xnnpack_entry(model, configs_mapping, mode=None, *args, **kwargs):
        config = configs_mapping[ALGO]
        return _SESSION["quantize"](model, int(config.fp32_layers), bool(config.dynamic))

    _CONFIG_CLASS = LgcXnnpackConfig
    return LgcXnnpackConfig


def autotune_fallback(gm, sizes: list[int], modes: list[bool], quantize: Callable, evaluate: Callable,
                      budget_db: float) -> dict:
    """Run INC's autotune over ``sizes`` x ``modes``; return the point it chose (or None) and every trial.

    ``quantize(gm, k, dynamic)`` returns the simulated-int8 graph with the top
    ``k`` layers fp32 (tagged ``lgc_point = (k, dynamic)`` here);
    ``evaluate(graph)`` its trial record, with ``psnr_db_min`` the end-to-end
    figure of the pipeline with that U-Net against the fp32 pipeline. The
    trials returned are those records, in INC's order.
    """
    import logging

    from neural_compressor.torch.quantization import TuningConfig, autotune

    config_class = _register()
    trials = []

    def score(model) -> float:
        if not getattr(model, "is_quantized", False):
            return 1.0  # INC's fp32 baseline: the reference the PSNR is measured against, so the budget is met
        record = evaluate(model)
        trials.append(record)
        return min(record["psnr_db_min"], budget_db) / budget_db

    def quantize_and_tag(model, k, dynamic):
        q = quantize(model, k, dynamic)
        q.lgc_point = (k, dynamic)
        return q

    _SESSION["quantize"] = quantize_and_tag
    space = config_class(fp32_layers=list(sizes), dynamic=list(modes))
    tune = TuningConfig(config_set=[space], tolerable_loss=0.0, max_trials=len(sizes) * len(modes))
    inc_logger = logging.getLogger("neural_compressor")
    level = inc_logger.level
    inc_logger.setLevel(logging.WARNING)  # INC logs every trial at INFO; lgc shows its own progress
    try:
        best = autotune(gm, tune, eval_fn=score)
    finally:
        inc_logger.setLevel(level)
        _SESSION.clear()
    chosen = getattr(best, "lgc_point", None) if best is not None else None
    return {"chosen": {"float_layers": chosen[0], "dynamic": chosen[1]} if chosen else None, "trials": trials}
