"""The Nested Learning optimizers (SPEC §6.2, §6.4): Muon, M3 (Multi-scale Momentum Muon), delta momentum and
deep momentum (DMGD), each a :class:`torch.optim.Optimizer`."""

from .delta_momentum import DeltaMomentum
from .dmgd import DeepMomentum
from .m3 import M3
from .muon import Muon

__all__ = ["M3", "DeepMomentum", "DeltaMomentum", "Muon"]
