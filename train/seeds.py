"""The random streams of a run, all derived from the run seed: one place, so that no two draw the same numbers.

Training data of rank ``r`` is stream ``r`` (``train.data``); the validation pairs are ``VALIDATION_STREAM``;
the noise of a training micro-batch (VAE posterior noise, timesteps, diffusion noise) comes from
``seed_for(seed, NOISE_STREAM, rank, micro_batch)``, validation's from ``seed_for(seed, VAL_NOISE_STREAM, m)``.
"""
from __future__ import annotations

NOISE_STREAM = 7
VAL_NOISE_STREAM = 8
#: stream id of the validation pairs (training streams are the ranks 0..world-1)
VALIDATION_STREAM = 1 << 20


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixing)."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


__all__ = ["NOISE_STREAM", "VAL_NOISE_STREAM", "VALIDATION_STREAM", "seed_for"]
