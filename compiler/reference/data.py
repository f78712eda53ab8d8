"""Training data of the reference pipeline: scikit-image's bundled photographs and captions.

The photographs ship inside the scikit-image wheel (no download), so the
reference model can be retrained on any machine, offline.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# Every caption names its photograph's content; the goldens prompt with them.
CAPTIONS: dict[str, str] = {
    "astronaut": "a photo of an astronaut in a white space suit",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a photo of a tabby cat",
    "rocket": "a rocket on the launch pad",
    "coins": "old coins on a gray background",
    "retina": "a fundus image of a retina",
    "camera": "a black and white photo of a cameraman",
    "horse": "a black silhouette of a horse",
    "hubble_deep_field": "galaxies in the deep field of space",
    "immunohistochemistry": "stained tissue under a microscope",
    "colorwheel": "a rainbow color wheel",
    "moon": "the cratered surface of the moon",
    "brick": "a brick wall",
    "grass": "a patch of green grass",
}
# Never trained on: VAE reconstruction on these measures generalisation.
HELDOUT_IMAGES = ("gravel", "clock", "cell", "page")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The named skimage.data photograph as an H×W×3 uint8 array."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def random_crop(img: torch.Tensor, size: int, rng: random.Random, min_frac: float = 0.6) -> torch.Tensor:
    """A random square crop (side ``min_frac``..1 of the short side), resized, randomly flipped."""
    _, h, w = img.shape
    side = int(min(h, w) * rng.uniform(min_frac, 1.0))
    y, x = rng.randint(0, h - side), rng.randint(0, w - side)
    crop = F.interpolate(img[None, :, y : y + side, x : x + side], size=(size, size), mode="area")[0]
    return crop.flip(-1) if rng.random() < 0.5 else crop


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-to-printable-character table of GPT-2/CLIP byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(max_length: int):
    """A CLIP byte-level BPE tokenizer whose merges are learned on the captions.

    Base vocabulary is CLIP's (every byte, with and without the end-of-word
    marker), so any prompt tokenizes; merges make each caption word one token.
    """
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    words = Counter(w for c in CAPTIONS.values() for w in c.lower().split())
    corpus = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in words.items()}
    merges = []
    while True:
        pairs = Counter()
        for sym, n in corpus.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        new = {}
        for sym, n in corpus.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new[tuple(out)] = n
        corpus = new
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=max_length)
