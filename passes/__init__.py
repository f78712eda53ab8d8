"""Every lgc pass, one per file; importing this package registers them all.

Each module is imported explicitly (no discovery by file name), so a pass
exists exactly when it is listed here.
"""

from lgc.passes.fusion import conv_as_gemm, deconv_as_gemm, deconv_as_phase_convs, decompose_group_norm, decompose_layer_norm, distinct_cat_inputs, expand_as_multiply, float_scalar_operands, fold_constants, fold_timestep_embedding, split_geglu_chunk, transformer_as_bc1s, unmask_attention, upsample_as_deconv, upsample_conv_as_deconv  # noqa: F401
from lgc.passes.quantization import analyze_sensitivity, annotate_xnnpack_w8a8, calibrate_observers, convert_pt2e, quantize_embedding_weights, search_mixed_precision, split_concat_conv, unshare_dynamic_quantization  # noqa: F401
from lgc.passes.step_reduction import lower_sampler, optimize_timesteps  # noqa: F401
