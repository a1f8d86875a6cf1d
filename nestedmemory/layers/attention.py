"""Causal softmax attention: global, sliding-window (SWA) and with persistent tokens, exact, on SDPA.

Softmax attention is the non-parametric (Nadaraya–Watson) solution of ``min_M Σ_i s(k_i, q)‖v_i − M‖²`` (ATLAS Eq. 17),
restricted to the last ``w`` tokens for SWA (ATLAS Eq. 18). Persistent memory (Titans §3.3, Eq. 19) prepends ``N_p``
learnable tokens ``[p_1 … p_Np] || x``; since they are input-independent, only their keys and values matter, so they are
held directly as learnable per-layer ``K_p, V_p`` ``[N_p, kv_heads, head_dim]``: every query attends to them, they carry
no RoPE and never leave the window (the "attention sink" of MAG / MAL, Titans §4.2-4.3, SPEC §3.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import LayerStates
from .common import residual_output
from .rope import rope_angles, rotate


class Attention(nn.Module):
    """Multi-head causal attention with RoPE, optional grouped-query heads, sliding window and persistent tokens.

    ``window=w``: each query sees itself and the ``w − 1`` previous positions (plus the persistent tokens); the decoding
    cache then keeps only the last ``w − 1`` keys/values. ``num_kv_heads`` (GQA): query head ``h`` reads key/value head
    ``h // (num_heads / num_kv_heads)``, as in Llama.

    RoPE positions count real tokens only (``cumsum(attention_mask) − 1``, continued across cached calls), so a
    left-padded sequence gets the same positions, hence the same outputs, as when run alone. Padding queries
    output zeros; no real query attends to a padding key.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, num_kv_heads: int | None = None,
                 window: int | None = None, persistent_tokens: int = 0, rope_theta: float = 10000.0,
                 layer_idx: int = 0):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1:
            raise ValueError(f"Attention.num_heads must be >= 1, got {num_heads}")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"Attention.num_heads={num_heads} must divide dim={dim} when head_dim is not given")
            head_dim = dim // num_heads
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"Attention.head_dim must be even (RoPE rotates channel pairs), got {head_dim}")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"Attention.num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        if window is not None and window < 1:
            raise ValueError(f"Attention.window must be None or an integer >= 1, got {window}")
        if persistent_tokens < 0:
            raise ValueError(f"Attention.persistent_tokens must be >= 0, got {persistent_tokens}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window, self.rope_theta, self.layer_idx = window, rope_theta, layer_idx
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.o_proj = residual_output(nn.Linear(num_heads * head_dim, dim, bias=False))
        self.persistent_tokens = persistent_tokens
        if persistent_tokens:  # no zero-size parameters: they never get a gradient (nor optimizer state)
            self.persistent_k = nn.Parameter(0.02 * torch.randn(persistent_tokens, num_kv_heads, head_dim))
            self.persistent_v = nn.Parameter(0.02 * torch.randn(persistent_tokens, num_kv_heads, head_dim))
        self.register_load_state_dict_pre_hook(_drop_empty_persistent_tokens)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, positions=None,
                **kwargs):
        """``hidden_states`` ``[B, T, dim]`` → ``(out [B, T, dim], None, past_key_values)``.

        ``attention_mask`` ``[B, T_total]`` (1 = token, 0 = left padding): only its last ``T`` columns are read, the
        validity of cached positions is kept in the cache. The cache entry (``past_key_values[layer_idx]``) holds
        ``k``, ``v`` ``[B, L, kv_heads, head_dim]`` (RoPE applied; all positions, or the last ``window − 1``),
        ``valid`` ``[B, L]`` (bool) and ``position`` ``[B]`` (real tokens seen so far). ``positions`` ``[T]`` or
        ``[B, T]``: the RoPE positions of the tokens, for a caller that lays its tokens out in another order than
        their positions (MAC's interleaved ``[h ∥ S]``); default the count of real tokens. The causal order is the
        order of the tokens either way.
        """
        b, t, _ = hidden_states.shape
        state = past_key_values[self.layer_idx] if past_key_values is not None else None
        valid = (torch.ones(b, t, dtype=torch.bool, device=hidden_states.device) if attention_mask is None
                 else attention_mask[:, -t:].bool())
        start = state["position"] if state is not None else torch.zeros(b, dtype=torch.long, device=valid.device)
        if positions is None:
            positions = (start[:, None] + valid.long().cumsum(1) - 1).clamp_min(0)
        positions = positions.expand(b, t)

        cos, sin = rope_angles(positions, self.head_dim, self.rope_theta, hidden_states.dtype)
        q = rotate(self.q_proj(hidden_states).view(b, t, self.num_heads, self.head_dim), cos, sin)
        k = rotate(self.k_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        # whether any cached or new position may be padding (a flag, so a step without padding reads nothing back)
        padded = attention_mask is not None or (state is not None and state.get("padded", True))
        if state is not None:
            k, v, valid = (torch.cat((state[n], x), 1) for n, x in (("k", k), ("v", v), ("valid", valid)))

        if use_cache:
            keep = k.shape[1] if self.window is None else min(self.window - 1, k.shape[1])
            past_key_values = LayerStates() if past_key_values is None else past_key_values
            past_key_values.update(self.layer_idx, {
                "k": k[:, k.shape[1] - keep:], "v": v[:, v.shape[1] - keep:], "valid": valid[:, valid.shape[1] - keep:],
                "position": start + valid[:, -t:].sum(1), "padded": padded})

        out = self._attend(q, k, v, valid, plain=attention_mask is None and state is None, padded=padded)
        out = out * valid[:, -t:, None, None].to(out.dtype)
        return self.o_proj(out.reshape(b, t, -1)), None, past_key_values

    def _attend(self, q, k, v, valid, plain, padded):
        """SDPA of ``q`` ``[B, T, H, D]`` over ``k, v`` ``[B, S, H_kv, D]`` (the queries are the last ``T`` of the
        ``S`` positions), behind the persistent tokens. Query ``i`` sees key ``j`` iff ``j ≤ i``, ``i − j < window``
        and ``j`` is a real token or ``j = i``: the diagonal keeps a padding query's row non-empty, so no NaN.
        ``padded`` False: every position is a real token (``valid`` is not read)."""
        b, t, s, n_p = q.shape[0], q.shape[1], k.shape[1], self.persistent_tokens
        if n_p:
            k = torch.cat((self.persistent_k.to(k.dtype).expand(b, -1, -1, -1), k), 1)
            v = torch.cat((self.persistent_v.to(v.dtype).expand(b, -1, -1, -1), v), 1)
        group = self.num_heads // self.num_kv_heads
        q = q.transpose(1, 2)
        k, v = (x.transpose(1, 2) if group == 1 else x.transpose(1, 2).repeat_interleave(group, 1) for x in (k, v))
        if plain and self.window is None and n_p == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        if t == 1 and (self.window is None or s <= self.window) and not padded:
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # one query that sees every key
        i = torch.arange(s - t, s, device=q.device)[:, None]
        j = torch.arange(s, device=q.device)
        allowed = j <= i
        if self.window is not None:
            allowed = allowed & (i - j < self.window)
        allowed = allowed & (valid[:, None, :] | (i == j))  # [B, T, S]
        allowed = torch.cat((allowed.new_ones(b, t, n_p), allowed), -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None]).transpose(1, 2)


def _drop_empty_persistent_tokens(layer: Attention, state_dict: dict, prefix: str, *args) -> None:
    """Load state dicts written when a layer without persistent tokens still held zero-size ``persistent_k`` /
    ``persistent_v``: those entries hold nothing and are dropped."""
    for name in ("persistent_k", "persistent_v"):
        if not layer.persistent_tokens and prefix + name in state_dict and state_dict[prefix + name].numel() == 0:
            del state_dict[prefix + name]
