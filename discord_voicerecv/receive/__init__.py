"""The receive path, one job per module.

``ingress`` (classify, authenticate, decrypt) -> ``unmapped`` (packets waiting for op5) -> ``e2ee`` (the DAVE
layer, ``dave`` for discord.py's session) -> ``playout`` (per stream: ``jitter`` buffer, ``timeline``, decoder)
-> ``sinkfeed`` (bounded queue to the sink). ``receiver`` wires them; ``scheduler`` runs every receiver's playout
on a few shared threads; ``stats`` counts every drop.
"""

from __future__ import annotations

from .e2ee import FrameDecryptor
from .receiver import Receiver

__all__ = ("FrameDecryptor", "Receiver")
