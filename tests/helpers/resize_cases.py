"""Test images for the resize tests, the same on every machine: a pure function of (height,
width, channels, pattern, seed), integer hashing only (no random generator whose stream could
change between NumPy versions), so that golden files store only the cases and Pillow's outputs."""
import numpy as np

PATTERNS = ("noise", "gradient", "flat", "checker")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash(*arrays):
    """uint64 mix of integer arrays (broadcast), splitmix64-style."""
    with np.errstate(over="ignore"):
        v = np.uint64(0x9E3779B97F4A7C15)
        for a in arrays:
            v = (v ^ np.asarray(a, np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            v = (v ^ (v >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
        return (v ^ (v >> np.uint64(29))) & _MASK64


def pattern_image(height: int, width: int, channels: int, pattern: int, seed: int) -> np.ndarray:
    """(height, width, channels) uint8 of PATTERNS[pattern]."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    name = PATTERNS[pattern]
    if name == "noise":
        return (_hash(y, x, c, seed) >> np.uint64(40)).astype(np.uint8)
    if name == "gradient":      # ramps of different slopes per channel, wrapping at 256
        slope = 1 + (_hash(c, seed) % np.uint64(7)).astype(np.int64)
        return ((x * 255 // max(width - 1, 1) + y * slope + c * 40) % 256).astype(np.uint8)
    if name == "flat":
        return (_hash(c, seed) >> np.uint64(40)).astype(np.uint8)
    # checker: 0 / 255 blocks of a seed-dependent size, the hardest edges for rounding
    block = 1 + int(_hash(seed) % np.uint64(5))
    return np.where((y // block + x // block + c) % 2 == 0, 255, 0).astype(np.uint8)


def pattern_mask(height: int, width: int, seed: int) -> np.ndarray:
    """(height, width) uint8 0/1 bitmask: noise blobs."""
    coarse = pattern_image(max(height // 3, 1) + 1, max(width // 3, 1) + 1, 1, 0, seed)[..., 0]
    return (coarse[np.arange(height) // 3][:, np.arange(width) // 3] > 127).astype(np.uint8)
