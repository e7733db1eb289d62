"""Saturating sum of s16le PCM frames in pure Python.

numpy is not a runtime dependency and a per-sample Python loop is too slow for every slot, so each frame is read
as one big integer and the samples are processed as 32-bit lanes of it (SIMD within a register): a handful of
big-integer operations per frame, all running in C.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

__all__ = ("mix_pcm",)

_MAX_FRAMES = 32_767
"""Lane sums stay below 2**31 up to this many frames (65535 * 32767 + 2**31 < 2**32)."""


class _Masks:
    __slots__ = ("all_ones", "bias_over", "flip", "lane_one", "low16", "low31", "range_bits", "range_mask")

    def __init__(self, nbytes: int) -> None:
        lanes = nbytes // 4
        self.flip = int.from_bytes(b"\x00\x80" * (nbytes // 2), "little")
        self.low16 = _replicate(0xFFFF, lanes)
        self.lane_one = _replicate(1, lanes)
        self.low31 = _replicate(0x7FFF_FFFF, lanes)
        self.all_ones = _replicate(0xFFFF_FFFF, lanes)
        self.bias_over = _replicate((1 << 31) - 65_536, lanes)
        self.range_mask = _replicate(0xFFFF_0000, lanes)
        self.range_bits = _replicate(0x8000_0000, lanes)


def _replicate(value: int, lanes: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little") * lanes, "little")


@lru_cache(maxsize=8)
def _masks(nbytes: int) -> _Masks:
    return _Masks(nbytes)


@lru_cache(maxsize=64)
def _ge_bias(nbytes: int, count: int) -> int:
    return _replicate((1 << 31) - (count - 1) * 32_768, nbytes // 4)


def _clip_lanes(total: int, count: int, nbytes: int, m: _Masks) -> int:
    """Map lane sums of offset-binary samples back to one clipped offset-binary sample per lane."""
    shifted = total + _ge_bias(nbytes, count)
    if shifted & m.range_mask == m.range_bits:
        # No lane left the int16 range (a lane holds 2**31 + sum + 32768): the usual case, nothing to clip.
        return shifted & m.low16
    ge = ((shifted >> 31) & m.lane_one) * 0xFFFF_FFFF
    lifted = shifted & m.low31 & ge
    over = (((lifted + m.bias_over) >> 31) & m.lane_one) * 0xFFFF_FFFF
    return (lifted & (over ^ m.all_ones)) | (m.low16 & over)


def mix_pcm(frames: Sequence[bytes], nbytes: int) -> bytes:
    """Sum s16le frames sample by sample, saturating to the int16 range.

    Every frame must be ``nbytes`` long (a multiple of 4). Returns ``nbytes`` of silence when ``frames`` is empty.
    """
    count = len(frames)
    if count == 0:
        return bytes(nbytes)
    if count == 1:
        return bytes(frames[0])
    if count > _MAX_FRAMES:
        raise ValueError(f"cannot mix more than {_MAX_FRAMES} frames at once")
    m = _masks(nbytes)
    flip, low16 = m.flip, m.low16
    even = 0
    total = 0
    for frame in frames:
        # XOR with 0x8000 turns two's complement samples into offset binary (sample + 32768), all non-negative.
        value = int.from_bytes(frame, "little") ^ flip
        even += value & low16
        total += value
    # The odd samples' sum, each lane shifted up 16 bits, is what the even lanes leave of the whole sum.
    odd = (total - even) >> 16
    even = _clip_lanes(even, count, nbytes, m)
    odd = _clip_lanes(odd, count, nbytes, m)
    return ((even | (odd << 16)) ^ m.flip).to_bytes(nbytes, "little")
