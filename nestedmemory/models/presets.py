"""Named models and sizes: ``from_preset("titans-mag", size="340m")``.

Rules (README table; SPEC §3-5): Titans = MLP (depth 2, expansion 4) + ℓ2 + decay + momentum (Titans Eq. 13-14);
Moneta / Yaad / Memora = MLP with LayerNorm (Miras §5.3) + ℓ3 + L4 / Huber + decay / ℓ2 + KL, GD; OmegaNet = MLP on
degree-2 polynomial features + ℓ2 + decay + Omega window 4, GD (Eq. 10); Atlas = the same memory with Muon
(Eq. 32-33) and the LayerNorm of Atlas App. E, as the rows of Atlas Table 2: ``atlas`` and ``atlas++`` (gated MLP,
Eq. 43) are recurrent (memory layers only), ``atlas-mag`` / ``atlas-mal`` the hybrids with sliding-window attention
(Atlas §5.1, Titans Fig. 3); DLA = MLP + dot + decay (Eq. 19); DeepTransformer / SWDT / Dot = the exact ``exp``
feature map (Eq. 25-31) with dot + GD / dot + Omega window 4 / dot + delta GD; TTT-Linear / TTT-MLP = ℓ2 GD at
mini-batch 16; the baselines as matrix memories: linear attention (dot, GD), DeltaNet (dot, delta GD), Gated
DeltaNet (dot, decay, delta GD), Mamba2 (dot, decay, GD: SSD). Hope = self-modifying Titans → CMS and
Hope-Attention = attention → CMS (NL §8.3); TNT = a global memory (chunk 2K) + a local memory (chunk 16, reset every
2K tokens) with Q-K projection, Titans' MLP with plain GD as in TNT's experiments (TNT §7.2-7.4). Memory Caching
(MC §3-4, ``layers.caching``): ``titans-lmm-grm`` / ``titans-lmm-soup`` / ``titans-lmm-ssc`` (gated residual
memory / Memory Soup / sparse selective caching, top 2), ``loglinear++`` (GRM over logarithmic segments, MC §4.2,
on Titans' memory), ``dla-grm`` and ``swla-grm`` (SWLA c = 2: a matrix memory with the dot bias, decay and an Omega
window of 2, MC Eq. 28), segments of 4 memory chunks (256 tokens at the paper sizes, MC's LM runs).

Sizes: ``tiny`` for CPU tests; ``170m``, ``340m``, ``760m``, ``1.3b`` with layers / width / heads of Miras Table 5
and Atlas Table 7, vocabulary 32K, untied embeddings. Those tables give no MLP width, and the architectures differ
in mixer size, so the SwiGLU width is solved for each preset to match the nominal parameter count (the papers
compare models of equal size); pass ``intermediate_size`` to fix it instead.
"""

from __future__ import annotations

import torch

from .config import SWA_ARCHITECTURES, TITANS_RULE, NestedMemoryConfig
from .modeling import NestedMemoryForCausalLM

MLP = dict(memory="mlp", depth=2, expansion=4)
MIRAS_MLP = dict(MLP, layernorm=True)
#: Titans' memory: an MLP without the residual read, its output layer starting at 0 (docs/decisions.md, "Titans' MLP
#: memory: no residual, output layer from zero"): a write then dominates the read whatever its size, as a matrix's.
TITANS = dict(TITANS_RULE, residual=False, zero_output=True)
POLY = dict(feature_map="poly", degree=2, objective="l2", retention="decay", window=4)
ATLAS = dict(MIRAS_MLP, **POLY, learner="muon")  # the memory's LayerNorm: Atlas App. E (docs/decisions.md)
EXP = dict(memory="linear", feature_map="exp", objective="dot", retention="none")
MATRIX = dict(memory="linear", objective="dot")

#: name → (architecture, memory rule without chunk_size).
PRESETS: dict[str, tuple[str, dict | None]] = {
    "titans-lmm": ("lmm", TITANS),
    "titans-mac": ("mac", TITANS),
    "titans-mag": ("mag", TITANS),
    "titans-mal": ("mal", TITANS),
    "moneta": ("lmm", dict(MIRAS_MLP, objective="lp", p=3.0, retention="lq", q=4.0, learner="gd",
                            lr_init=1e-3, lr_max=1.5e-3, decay_init=1e-4)),  # ℓ3 curvature ∝ |e|: see decisions
    "yaad": ("lmm", dict(MIRAS_MLP, objective="huber", retention="decay", learner="gd", proximal=True,
                         decay_init=1e-4)),  # the implicit step: see decisions, "Yaad's implicit step"
    "memora": ("lmm", dict(MIRAS_MLP, objective="l2", retention="kl", learner="gd")),
    "omeganet": ("lmm", dict(MLP, **POLY, learner="omega")),
    "atlas": ("lmm", ATLAS),  # Atlas Table 2's rows: Atlas, Atlas++ (gated MLP, Eq. 43), Atlas (MAG), Atlas (MAL)
    "atlas++": ("lmm", dict(ATLAS, gated=True)),
    "atlas-mag": ("mag", ATLAS),
    "atlas-mal": ("mal", ATLAS),
    "dla": ("lmm", dict(MLP, objective="dot", retention="decay", learner="gd", lr_init=0.01)),  # see decisions
    "deeptransformer": ("lmm", dict(EXP, learner="gd")),
    "dot": ("lmm", dict(EXP, learner="dgd")),
    "swdt": ("lmm", dict(EXP, learner="omega", window=4)),
    "ttt-linear": ("lmm", dict(memory="linear", objective="l2", retention="none", learner="gd")),
    "ttt-mlp": ("lmm", dict(MIRAS_MLP, objective="l2", retention="none", learner="gd")),
    "transformer++": ("transformer", None),
    "linear-attention": ("lmm", dict(MATRIX, retention="none", learner="gd")),
    "deltanet": ("lmm", dict(MATRIX, retention="none", learner="dgd")),
    "gated-deltanet": ("lmm", dict(MATRIX, retention="decay", learner="dgd")),
    "mamba2": ("lmm", dict(MATRIX, retention="decay", learner="gd")),
    "tnt": ("tnt", dict(TITANS, learner="gd")),  # TNT stage 1: one global + one local memory, plain GD (TNT §7.2)
    "hope": ("hope", {}),  # self-modifying Titans → CMS (NL §8.3, Eq. 94-97)
    "swla-grm": ("lmm", dict(MATRIX, retention="decay", learner="omega", window=2,  # MC Eq. 28
                             caching=dict(aggregation="gated"))),
    "hope-attention": ("transformer", None),  # Transformer whose MLP is a CMS (NL §8.3)
}
for _name in ("moneta", "yaad", "memora"):  # Samba-style hybrids (Miras §5.4)
    PRESETS[f"{_name}-h"] = ("hybrid", PRESETS[_name][1])
for _name, _base, _caching in (("titans-lmm-grm", "titans-lmm", dict(aggregation="gated")),  # Memory Caching (MC §3)
                               ("titans-lmm-soup", "titans-lmm", dict(aggregation="soup")),
                               ("titans-lmm-ssc", "titans-lmm", dict(aggregation="sparse", top_k=2)),
                               ("dla-grm", "dla", dict(aggregation="gated")),
                               ("loglinear++", "titans-lmm", dict(aggregation="gated", segmentation="log"))):
    PRESETS[_name] = ("lmm", dict(PRESETS[_base][1], caching=_caching))  # segments: 4 memory chunks
#: the presets whose MLPs are a Continuum Memory System: name → ``cms`` options without ``periods`` (set by size).
CMS_PRESETS: dict[str, dict] = {"hope": dict(variant="sequential"), "hope-attention": dict(variant="sequential")}

#: size → backbone and the size-dependent choices: memory chunk, SWA window (Atlas §5.7: 2K), MAC segment,
#: persistent / long-term memory tokens (Titans leaves all of these open), the memory head width of the
#: polynomial-feature presets (φ_2 of a d-dim key has 1 + d + d² features, so narrow memory heads keep the memory's
#: first layer — and Muon's per-token Newton–Schulz — small), and the CMS periods (NL gives none for its LM runs:
#: four levels ×4 apart, the slowest at 2K — NL Fig. 7's efficient choice; tiny: two levels that a 20-token test
#: crosses).
SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, chunk=8, window=4, segment_size=8,
                 persistent_tokens=2, longterm_tokens=2, poly_head_dim=8, cms_periods=[4, 16],
                 tnt=dict(chunk_size=16, local_chunk_sizes=[4], shard_sizes=16)),
    "170m": dict(vocab_size=32000, hidden_size=768, num_layers=12, num_heads=16),
    "340m": dict(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=16),
    "760m": dict(vocab_size=32000, hidden_size=1536, num_layers=24, num_heads=16),
    "1.3b": dict(vocab_size=32000, hidden_size=2048, num_layers=18, num_heads=8),
}
for _size in ("170m", "340m", "760m", "1.3b"):
    SIZES[_size].update(chunk=64, window=2048, segment_size=512, persistent_tokens=4, longterm_tokens=4,
                        poly_head_dim=16, cms_periods=[32, 128, 512, 2048],
                        tnt=dict(chunk_size=2048, local_chunk_sizes=[16], shard_sizes=2048))
#: nominal parameter counts of the paper sizes.
NOMINAL = {"170m": 170e6, "340m": 340e6, "760m": 760e6, "1.3b": 1.3e9}
#: their blocks hold two token mixers (attention and memory); the tables' layer count is the number of token
#: mixers (as for Samba-style hybrids), so they get half as many blocks.
TWO_MIXER_ARCHITECTURES = ("mac", "mag", "mal")
TTT_CHUNK = 16  # TTT's mini-batch size


def preset_config(name: str, size: str = "tiny", **overrides) -> NestedMemoryConfig:
    """The :class:`NestedMemoryConfig` of preset ``name`` at ``size``; ``overrides`` replace any config field
    (``memory`` replaces the whole rule dict)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(SIZES)}")
    architecture, rule = PRESETS[name]
    fields = dict(SIZES[size])
    chunk, poly_head_dim, periods = fields.pop("chunk"), fields.pop("poly_head_dim"), fields.pop("cms_periods")
    tnt = fields.pop("tnt")
    kwargs = dict(fields, architecture=architecture)
    if name in CMS_PRESETS:
        kwargs["cms"] = dict(CMS_PRESETS[name], periods=periods)
    if rule is not None:
        kwargs["memory"] = dict(rule, chunk_size=min(chunk, TTT_CHUNK) if name.startswith("ttt") else chunk)
        if architecture == "tnt":
            kwargs["memory"].update(tnt)
        if rule.get("feature_map") == "poly":
            kwargs.update(memory_head_dim=poly_head_dim, memory_heads=kwargs["hidden_size"] // poly_head_dim)
    if architecture not in SWA_ARCHITECTURES:
        kwargs["window"] = None
    if architecture in TWO_MIXER_ARCHITECTURES:
        kwargs["num_layers"] = max(1, kwargs["num_layers"] // 2)
    else:
        kwargs["persistent_tokens"] = 0
    kwargs.update(overrides)
    if size in NOMINAL and "intermediate_size" not in overrides:
        kwargs["intermediate_size"] = matched_intermediate(
            NOMINAL[size], lambda n: NestedMemoryConfig(**dict(kwargs, intermediate_size=n)))
    return NestedMemoryConfig(**kwargs)


def from_preset(name: str, size: str = "tiny", **overrides) -> NestedMemoryForCausalLM:
    """A freshly initialised :class:`NestedMemoryForCausalLM` of preset ``name`` at ``size`` (see
    :func:`preset_config`)."""
    return NestedMemoryForCausalLM(preset_config(name, size, **overrides))


def count_parameters(config: NestedMemoryConfig) -> int:
    """The parameter count of the model of ``config``, built on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in NestedMemoryForCausalLM(config).parameters())


def matched_intermediate(target: float, config_of) -> int:
    """The SwiGLU width (a multiple of 32; of every CMS level) that brings the model of ``config_of(width)`` to
    ``target`` parameters: the count is affine in it."""
    low, high = (count_parameters(config_of(n)) for n in (32, 64))
    return max(32, 32 + 32 * round((target - low) / (high - low)))
