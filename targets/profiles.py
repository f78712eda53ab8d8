"""Build profiles: named, data-only descriptions of a target.

Every profile runs the one shared pipeline below. A profile removes passes
from it or sets their options; it never reorders it, so any two profiles
differ only in what they leave out and how they tune what they keep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lgc.compiler.errors import UsageError

# The single source of truth for pass order.
SHARED_PIPELINE: tuple[str, ...] = (
    # First: calibration samples exactly the timesteps the shipped sampler visits.
    "lower_sampler",
    # Searched timesteps replace the default ones before anything samples them.
    "optimize_timesteps",
    # Rewrites that change which ops exist come before quantization, so the
    # quantizer annotates the rewritten patterns.
    "fold_constants",  # first of them: the causal mask becomes a constant unmask_attention can take
    "unmask_attention",
    "split_geglu_chunk",
    # Apple's Neural Engine layout for the iOS profiles: it reads attention as
    # bmm/softmax/bmm and GEGLU's gate as slices, so it comes after both.
    "transformer_as_bc1s",
    "distinct_cat_inputs",  # before quantization: the cat annotator then sees two inputs
    "expand_as_multiply",
    "float_scalar_operands",
    # Before quantization: the fused transposed conv is quantized as one layer.
    "upsample_conv_as_deconv",
    # int8 only, before quantization so each phase is quantized as a conv: XNNPACK's quantized
    # deconvolution is slower than its convolutions (fp32 ones become GEMMs in deconv_as_gemm instead).
    "deconv_as_phase_convs",
    # A quantization recipe that rewrites the graph: before anything ranks or annotates its layers.
    "split_concat_conv",
    # Analysis of the fp32 graphs the quantizer is about to see (--explain).
    "analyze_sensitivity",
    # --min-psnr: which layers stay fp32, decided before the quantizer annotates.
    "search_mixed_precision",
    # PT2E keeps its three steps apart: annotate, observe, convert.
    "annotate_xnnpack_w8a8",
    "calibrate_observers",
    "convert_pt2e",
    # After convert, which creates the dynamic quantize chains it duplicates.
    "unshare_dynamic_quantization",
    # Weight-only: embeddings are outside XNNPACK, so the PT2E flow leaves them fp32.
    "quantize_embedding_weights",
    # After quantization: only the convolutions it left in fp32 become GEMMs
    # (XNNPACK's quantized convolutions are faster as they are).
    "conv_as_gemm",
    "deconv_as_gemm",
    # Normalisations are decomposed after quantization: the quantizer would
    # annotate their add/mul in int8, and their statistics need fp32.
    "decompose_group_norm",
    "decompose_layer_norm",
    # Exact data movement: quantizing it would add rounding and no speed.
    "upsample_as_deconv",
    # Last: it changes the U-Net's inputs, which calibration and the searches above feed.
    "fold_timestep_embedding",
)
QUANTIZATION_PASSES = ("split_concat_conv", "analyze_sensitivity", "search_mixed_precision", "annotate_xnnpack_w8a8", "calibrate_observers", "convert_pt2e", "unshare_dynamic_quantization", "quantize_embedding_weights")
# Forms only XNNPACK needs: Core ML converts GroupNorm, LayerNorm and nearest upsampling natively.
# distinct_cat_inputs, expand_as_multiply and float_scalar_operands avoid ops ExecuTorch's
# XNNPACK lowering would leave outside the delegate. fold_timestep_embedding needs an
# artifact with two methods, which only the ExecuTorch emitter writes.
XNNPACK_FORM_PASSES = ("fold_timestep_embedding", "distinct_cat_inputs", "expand_as_multiply", "float_scalar_operands", "upsample_conv_as_deconv", "conv_as_gemm", "deconv_as_gemm", "decompose_group_norm", "decompose_layer_norm", "upsample_as_deconv")
# Forms only quantized XNNPACK programs need.
INT8_FORM_PASSES = ("deconv_as_phase_convs",)
# Forms only Core ML's Neural Engine needs: XNNPACK and TVM keep sequences as (B, S, C) and linears as GEMMs.
ANE_FORM_PASSES = ("transformer_as_bc1s",)
# Core ML targets: float, converted from the graphs as the fusion passes leave them.
NON_XNNPACK_DISABLED = QUANTIZATION_PASSES + XNNPACK_FORM_PASSES + INT8_FORM_PASSES


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    runtime: str  # key of the emitter in lgc.targets.EMITTERS
    precision: str  # what the weights and activations are computed in
    components: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")
    solver: str = "auto"  # "auto": the model's own diffusers scheduler (scheduler_config.json's _class_name)
    steps: int = 20
    schedule: str = "default"  # "default": the scheduler's timesteps; "optimized": searched (optimize_timesteps)
    guidance_scale: float = 5.0
    image_size: int | None = None  # None: the model's own (U-Net sample_size x VAE factor)
    disabled_passes: tuple[str, ...] = ()
    pass_options: dict = field(default_factory=dict)
    emit_options: dict = field(default_factory=dict)  # read by the runtime's emitter (e.g. Core ML deployment target, weight format)
    # Artifacts this machine cannot run (arm64 code) are verified through a twin: the same
    # post-pass graphs emitted with this other profile's emit options, run by the harness.
    verify_with: str | None = None

    def pipeline(self) -> list[str]:
        return [p for p in SHARED_PIPELINE if p not in self.disabled_passes]

    def options(self) -> dict[str, dict]:
        """Per-pass options, with the sampler settings handed to ``lower_sampler``."""
        opts = {k: dict(v) for k, v in self.pass_options.items() if k in self.pipeline()}
        opts.setdefault("lower_sampler", {}).update(solver=self.solver, steps=self.steps, guidance_scale=self.guidance_scale)
        if "optimize_timesteps" in self.pipeline():
            opts.setdefault("optimize_timesteps", {})["schedule"] = self.schedule
        return opts

    def with_pass_options(self, settings: list[str]) -> "Profile":
        """Apply ``PASS.OPTION=VALUE`` settings (``lgc build --set``); VALUE is JSON, or a bare string."""
        import json

        merged = {k: dict(v) for k, v in self.pass_options.items()}
        for s in settings:
            key, eq, raw = s.partition("=")
            pass_name, dot, option = key.strip().partition(".")
            if not eq or not dot or not pass_name or not option:
                raise UsageError(f"--set expects PASS.OPTION=VALUE, got {s!r}")
            if (pass_name, option) in (("lower_sampler", "solver"), ("lower_sampler", "steps"),
                                       ("lower_sampler", "guidance_scale"), ("optimize_timesteps", "schedule")):
                flag = {"guidance_scale": "--guidance"}.get(option, f"--{option}")
                raise UsageError(f"--set {key}: the sampler is set with {flag}, not --set")
            if pass_name not in self.pipeline():
                raise UsageError(f"--set {key}: pass '{pass_name}' is not in {self.name}'s pipeline ({', '.join(self.pipeline())})")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            merged.setdefault(pass_name, {})[option] = tuple(value) if isinstance(value, list) else value
        return dataclasses.replace(self, pass_options=merged)

    def with_overrides(self, **kw) -> "Profile":
        kw = {k: v for k, v in kw.items() if v is not None}
        if "steps" in kw and kw["steps"] < 1:
            raise UsageError(f"--steps must be at least 1, got {kw['steps']}")
        if "schedule" in kw and kw["schedule"] not in ("default", "optimized"):
            raise UsageError(f"--schedule must be 'default' or 'optimized', got {kw['schedule']!r}")
        if "image_size" in kw and kw["image_size"] < 8:
            raise UsageError(f"--image-size must be at least 8, got {kw['image_size']}")
        return dataclasses.replace(self, **kw)

    def with_emit_options(self, **kw) -> "Profile":
        """Set options the runtime's emitter reads; one it does not read is refused."""
        kw = {k: v for k, v in kw.items() if v is not None}
        for k, v in kw.items():
            if k not in EMIT_OPTION_FLAGS.get(self.runtime, {}):
                raise UsageError(f"{EMIT_OPTION_FLAGS_ALL.get(k, k)} does not apply to {self.name} "
                                 f"(it is for {', '.join(n for n, p in PROFILES.items() if k in EMIT_OPTION_FLAGS.get(p.runtime, {}))})")
            if k == "tuning_trials" and (not isinstance(v, int) or v < 0):
                raise UsageError(f"--tune-trials must be 0 or more, got {v}")
        return dataclasses.replace(self, emit_options={**self.emit_options, **kw})


# Emit options a build may set from the command line, per runtime, and their flags.
EMIT_OPTION_FLAGS = {"tvm": {"tuning_trials": "--tune-trials", "tuning_records": "--no-tuning-records"}}
EMIT_OPTION_FLAGS_ALL = {k: f for flags in EMIT_OPTION_FLAGS.values() for k, f in flags.items()}
# Emit options a verification twin takes over from the profile it verifies.
TWIN_SHARED_EMIT_OPTIONS = ("tuning_trials", "tuning_records")


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="android-int8",
            description="ExecuTorch .pte, XNNPACK delegate, PT2E static W8A8 (per-channel int8 weights, int8 activations)",
            runtime="executorch-xnnpack",
            precision="int8",
            disabled_passes=ANE_FORM_PASSES,
        ),
        Profile(
            name="android-fp32",
            description="ExecuTorch .pte, XNNPACK delegate, fp32",
            runtime="executorch-xnnpack",
            precision="fp32",
            disabled_passes=QUANTIZATION_PASSES + INT8_FORM_PASSES + ANE_FORM_PASSES,
        ),
        *(
            Profile(
                name=name,
                description=f"Core ML ML program (.mlpackage), fp16 compute, {what}, minimum deployment target {os_}",
                runtime="coreml",
                precision=precision,
                disabled_passes=NON_XNNPACK_DISABLED,
                emit_options={"minimum_deployment_target": os_, "weights": weights},
            )
            for name, precision, weights, what, os_ in (
                ("ios-fp16", "fp16", "fp16", "fp16 weights", "iOS17"),
                ("ios-w8", "w8-fp16", "int8-linear", "int8 per-channel linear weights", "iOS17"),
                ("ios-w4", "w4-fp16", "4bit-palettized", "4-bit palettized weights (per grouped channel)", "iOS18"),
                ("ios-w6", "w6-fp16", "6bit-palettized", "6-bit palettized weights (per grouped channel)", "iOS18"),
            )
        ),
        *(
            Profile(
                name=name,
                description=description,
                runtime="tvm",
                precision="fp32",
                disabled_passes=NON_XNNPACK_DISABLED + ANE_FORM_PASSES,
                # tuning_trials: MetaSchedule trials per kernel that has no record yet (0: apply the
                # records there are, tune nothing; --tune-trials sets it). tuning_records false
                # (--no-tuning-records): every kernel untuned, the fallback and the benchmark's baseline.
                emit_options={"os": os_, "target": target, "tuning_trials": 0, "tuning_records": True},
                verify_with=twin,
            )
            for name, description, os_, target, twin in (
                ("tvm-host", "TVM Relax module for this machine (LLVM): the verification twin of tvm-android-arm64",
                 "host", {"kind": "llvm", "mcpu": "host"}, None),
                ("tvm-android-arm64", "TVM Relax module for arm64 Android (LLVM, NEON), an archive of AArch64 objects the app links with the NDK",
                 "android", {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"]}, "tvm-host"),
            )
        ),
        Profile(
            name="ios-et",
            description="ExecuTorch .pte with the Core ML delegate (fp16 compute, iOS17), for apps that standardise on ExecuTorch",
            runtime="executorch-coreml",
            precision="fp16",
            disabled_passes=NON_XNNPACK_DISABLED,
            emit_options={"minimum_deployment_target": "iOS17"},
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(f"unknown target '{name}'; known targets: {', '.join(PROFILES)}") from None
