"""Small pieces shared by the token mixers: causal short convolution, RMSNorm, bounded gates (SPEC §2.3)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def keep_init(*modules: nn.Module) -> None:
    """Mark linear layers whose constructor initialisation is deliberate (a gate's zero projection and its bias at
    the gate's initial value, a threshold's softplus bias): the model's weight initialisation leaves them as they are
    (:meth:`~nestedmemory.models.NestedMemoryPreTrainedModel._init_weights`)."""
    for module in modules:
        for linear in module.modules():
            linear.keep_init = True


def residual_output(linear: nn.Linear) -> nn.Linear:
    """Mark ``linear`` as a layer's output projection (what the block adds to the residual stream): the model draws
    it with the GPT-2 / Llama-style scaled standard deviation ``σ / sqrt(2 · num_layers)``."""
    linear.residual_output = True
    return linear


class ShortConvolution(nn.Module):
    """Depthwise causal 1-D convolution over time, kernel ``size`` (Titans §4.4, Miras §5.4: size 4).

    ``forward(x [B, T, C], state)`` returns ``(y, new_state)``; ``state`` holds the last ``size − 1`` inputs, so
    decoding token by token equals one pass over the whole sequence."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        if size < 1:
            raise ValueError(f"conv size must be >= 1, got {size}")
        self.size = size
        self.weight = nn.Parameter(torch.empty(channels, size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():  # start near the identity so early training sees the projections themselves
            self.weight.mul_(0.1)
            self.weight[:, -1] += 1.0

    def forward(self, x, state=None):
        b, _, c = x.shape
        if state is None:
            state = x.new_zeros(b, self.size - 1, c)
        padded = torch.cat([state.to(x.dtype), x], dim=1)
        weight = self.weight.to(x.dtype)
        if x.shape[1] == 1:  # one token (decoding): the window's weighted sum, without a convolution call
            y = (padded * weight.t()).sum(1, keepdim=True)
        else:
            y = F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), groups=c).transpose(1, 2)
        return y, padded[:, padded.shape[1] - (self.size - 1):]


class RMSNorm(nn.Module):
    """``x / rms(x) * g`` over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # at least fp32; fp64 stays fp64
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps).to(dtype)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class Gate(nn.Module):
    """A token-wise gate in ``(0, scale)``: ``scale · sigmoid(x W + b)``, per head (``[B, T, H]``) or channel-wise
    through a low-rank projection ``x → R^r → R^{H·D}`` (Miras §4.5, RWKV-7 style). ``init`` is the value at
    initialisation (the projection starts at zero, so every token gets exactly ``init``)."""

    def __init__(self, dim: int, heads: int, *, init: float, scale: float = 1.0, channels: int | None = None,
                 rank: int = 32):
        super().__init__()
        if not 0 < init < scale:
            raise ValueError(f"gate init must lie in (0, {scale}), got {init}")
        self.heads, self.channels, self.scale = heads, channels, scale
        out = heads * (channels or 1)
        self.proj = nn.Linear(dim, out) if channels is None else \
            nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, out))
        last = self.proj if channels is None else self.proj[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, logit(init / scale))
        keep_init(self.proj)

    def forward(self, x):
        g = self.scale * torch.sigmoid(self.proj(x))
        if self.channels is None:
            return g
        return g.unflatten(-1, (self.heads, self.channels))


def left_aligned(mixer, hidden_states, real):
    """Run ``mixer`` on left-padded sequences moved to the front (padding trailing and zeroed) and move its outputs
    back: a causal mixer whose computation has a grid anchored at the first token (memory chunks, MAC segments)
    then treats each padded sequence exactly as the sequence alone. Outputs at padding positions are finite and
    meaningless."""
    t = hidden_states.shape[1]
    shift = (1 - real).sum(1).long()
    steps = torch.arange(t, device=real.device)
    moved = torch.gather(hidden_states * real.unsqueeze(-1), 1,
                         ((steps + shift[:, None]) % t).unsqueeze(-1).expand_as(hidden_states))
    out = mixer(moved)[0]
    return torch.gather(out, 1, ((steps - shift[:, None]) % t).unsqueeze(-1).expand_as(out))


def head_layout(dim: int, num_heads: int, head_dim: int | None) -> int:
    """``head_dim`` (default ``dim / num_heads``, which must then divide), checked."""
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pass head_dim")
        head_dim = dim // num_heads
    if num_heads < 1 or head_dim < 1:
        raise ValueError(f"num_heads and head_dim must be >= 1, got {num_heads} and {head_dim}")
    return head_dim


def real_tokens(hidden_states, attention_mask):
    """``[B, T]``: 1 for tokens, 0 for (left) padding, from the 2-D mask of the whole sequence so far."""
    b, t, _ = hidden_states.shape
    return hidden_states.new_ones(b, t) if attention_mask is None else attention_mask[:, -t:].to(hidden_states)


def padded_output(mixer, hidden_states, attention_mask, cache, use_cache):
    """A recurrent mixer's output on a batch with padding (:func:`left_aligned`), or ``None`` if nothing is padding.
    Padded batches cannot be decoded with a cache yet (each sequence would need its own chunk offset). Without a
    mask nothing is read back from the device (no host sync: a compiled step stays one graph)."""
    if attention_mask is None:
        return None
    real = real_tokens(hidden_states, attention_mask)
    if bool(real.all()):
        return None
    if use_cache or cache is not None:
        raise NotImplementedError("padded batches with a decoding cache are not supported by memory layers "
                                  "yet; generate one sequence (or equal-length sequences) at a time")
    return left_aligned(mixer, hidden_states, real)
