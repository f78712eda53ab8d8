"""Quality metrics against golden outputs (scikit-image's PSNR and SSIM)."""

from __future__ import annotations

import numpy as np
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def psnr_db(test, ref, data_range: float | None = None) -> float:
    """PSNR of ``test`` against ``ref``; data range defaults to the reference's peak-to-peak.

    Identical inputs give +inf; reports cap it at 99 dB so JSON stays finite.
    """
    from skimage.metrics import peak_signal_noise_ratio

    t, r = _np(test), _np(ref)
    if t.shape != r.shape:
        raise ValueError(f"shape mismatch {t.shape} vs {r.shape}")
    rng = data_range if data_range is not None else float(r.max() - r.min()) or 1.0
    if np.array_equal(t, r):
        return 99.0
    return float(min(99.0, peak_signal_noise_ratio(r, t, data_range=rng)))


def ssim(test_image, ref_image) -> float:
    """SSIM of two [1|·, 3, H, W] images in [0, 1]."""
    from skimage.metrics import structural_similarity

    t, r = _np(test_image).squeeze(), _np(ref_image).squeeze()
    return float(structural_similarity(r, t, channel_axis=0, data_range=1.0))
