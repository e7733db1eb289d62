"""Mixing s16le PCM frames in pure Python: a saturating sum, and a peak limiter that keeps the sum from clipping.

numpy is not a runtime dependency and a per-sample Python loop is too slow for every slot, so each frame is read
as one big integer and the samples are processed as 32-bit lanes of it (SIMD within a register): a handful of
big-integer operations per frame, all running in C.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from functools import lru_cache

__all__ = ("LIMIT", "MAX_GAIN", "Limiter", "mix_pcm", "scale_pcm", "sum_peak")

MAX_GAIN = 16.0
"""Largest per-user gain (+24 dB)."""
_ONE = 256
"""Gains are applied in fixed point with 8 fractional bits (steps of 0.004, about 0.03 dB)."""
_HEADROOM = 16
"""Scaled lanes carry this many times 32768 of bias so that they stay non-negative for every gain up to 16."""

LIMIT = 29_205
"""The mix limiter's ceiling: -1 dBFS. A slot whose sum would clip is turned down to peak here."""
RELEASE_DB_PER_SLOT = 0.75
"""How fast the limiter's gain comes back up after a loud slot: 0.75 dB per 20 ms (6 dB in 160 ms)."""
_RELEASE = 10 ** (RELEASE_DB_PER_SLOT / 20)
_LANE = next(code for code in "IL" if array(code).itemsize == 4)

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
    m = _masks(nbytes)
    even, odd = _lane_sums(frames, m)
    return _assemble(_clip_lanes(even, count, nbytes, m), _clip_lanes(odd, count, nbytes, m), nbytes, m)


def _lane_sums(frames: Sequence[bytes], m: _Masks) -> tuple[int, int]:
    """The even and the odd samples' sums of offset-binary samples (true sum + count * 32768), one per 32-bit lane."""
    if len(frames) > _MAX_FRAMES:
        raise ValueError(f"cannot mix more than {_MAX_FRAMES} frames at once")
    flip, low16 = m.flip, m.low16
    even = 0
    total = 0
    for frame in frames:
        # XOR with 0x8000 turns two's complement samples into offset binary (sample + 32768), all non-negative.
        value = int.from_bytes(frame, "little") ^ flip
        even += value & low16
        total += value
    # The odd samples' sum, each lane shifted up 16 bits, is what the even lanes leave of the whole sum.
    return even, (total - even) >> 16


def _assemble(even: int, odd: int, nbytes: int, m: _Masks) -> bytes:
    return ((even | (odd << 16)) ^ m.flip).to_bytes(nbytes, "little")


def _fits(lanes: int, count: int, nbytes: int, m: _Masks) -> bool:
    """Every lane's sum is within the int16 range (the mix needs no saturation)."""
    return (lanes + _ge_bias(nbytes, count)) & m.range_mask == m.range_bits


def _peak(lanes: int, count: int, nbytes: int) -> int:
    values = array(_LANE, lanes.to_bytes(nbytes, "little"))
    if sys.byteorder == "big":
        values.byteswap()
    bias = count * 32_768
    return max(max(values) - bias, bias - min(values))


def sum_peak(frames: Sequence[bytes], nbytes: int) -> int:
    """The largest magnitude the sample-by-sample sum of ``frames`` reaches, before any saturation."""
    if not frames:
        return 0
    even, odd = _lane_sums(frames, _masks(nbytes))
    return max(_peak(even, len(frames), nbytes), _peak(odd, len(frames), nbytes))


class Limiter:
    """Mixes slot after slot like :func:`mix_pcm`, but turns a slot down instead of letting its sum clip.

    When the speakers of a slot would sum beyond full scale, each of them is scaled by the same gain so that the
    sum peaks at :data:`LIMIT` (-1 dBFS; instant attack, no clipped samples); the gain then returns to 1 by
    :data:`RELEASE_DB_PER_SLOT` per slot. A slot that fits is the exact sum, so a lone speaker or a quiet call is
    untouched, at the cost of a plain sum. One limiter per mixed track: the gain carries from slot to slot.
    """

    __slots__ = ("gain", "limited")

    def __init__(self) -> None:
        self.gain = 1.0
        """The gain applied to the last slot (1.0 when it was not turned down)."""
        self.limited = 0
        """Slots turned down so far."""

    def skip(self, slots: int) -> None:
        """``slots`` silent slots went by: the gain recovers as if each had been mixed."""
        if self.gain < 1.0 and slots > 0:
            self.gain = min(1.0, self.gain * _RELEASE**slots)

    def mix(self, frames: Sequence[bytes], nbytes: int) -> bytes:
        """The mix of one slot's frames (each ``nbytes`` long; none for a silent slot), limited."""
        count = len(frames)
        if count == 0:
            self.skip(1)
            return bytes(nbytes)
        if count == 1 and self.gain >= 1.0:
            return bytes(frames[0])
        m = _masks(nbytes)
        even, odd = _lane_sums(frames, m)
        if self.gain >= 1.0 and _fits(even, count, nbytes, m) and _fits(odd, count, nbytes, m):
            return _assemble(_clip_lanes(even, count, nbytes, m), _clip_lanes(odd, count, nbytes, m), nbytes, m)
        peak = max(_peak(even, count, nbytes), _peak(odd, count, nbytes))
        gain = min(1.0, self.gain * _RELEASE, LIMIT / peak if peak > LIMIT else 1.0)
        if gain < 1.0:
            gain = math.floor(gain * _ONE) / _ONE  # the gain stage's own step, rounded down: never above the limit
        self.gain = gain
        if gain >= 1.0:
            return _assemble(_clip_lanes(even, count, nbytes, m), _clip_lanes(odd, count, nbytes, m), nbytes, m)
        self.limited += 1
        return mix_pcm([scale_pcm(frame, gain) for frame in frames], nbytes)


@lru_cache(maxsize=64)
def _scale_constants(nbytes: int, factor: int) -> tuple[int, int]:
    lanes = nbytes // 4
    bias = 32_768 * (_ONE - factor) + _HEADROOM * 32_768 * _ONE + _ONE // 2
    return _replicate(bias, lanes), _replicate(0xFF_FFFF, lanes)


def scale_pcm(pcm: bytes, gain: float) -> bytes:
    """s16le PCM multiplied by ``gain`` (0 to :data:`MAX_GAIN`), rounded and saturated to the int16 range.

    Pure Python at the cost of a few big-integer operations per frame (the lane technique of the mixer), so it
    can run for every speaker in every slot; ``len(pcm)`` must be a multiple of 4.
    """
    if not 0.0 <= gain <= MAX_GAIN:
        raise ValueError(f"gain must be within [0, {MAX_GAIN}], not {gain!r}")
    factor = round(gain * _ONE)
    nbytes = len(pcm)
    if factor == _ONE or nbytes == 0:
        return bytes(pcm)
    m = _masks(nbytes)
    bias, low24 = _scale_constants(nbytes, factor)
    value = int.from_bytes(pcm, "little") ^ m.flip
    # Each 32-bit lane holds u * factor + bias with u = sample + 32768; after >> 8 it is
    # round(sample * gain) + 32768 + 16 * 32768, which the mixer's clipping treats as a sum of 17 samples.
    even = (((value & m.low16) * factor + bias) >> 8) & low24
    odd = ((((value >> 16) & m.low16) * factor + bias) >> 8) & low24
    even = _clip_lanes(even, _HEADROOM + 1, nbytes, m)
    odd = _clip_lanes(odd, _HEADROOM + 1, nbytes, m)
    return ((even | (odd << 16)) ^ m.flip).to_bytes(nbytes, "little")
