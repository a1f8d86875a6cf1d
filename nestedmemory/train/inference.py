"""A trained model for evaluation and sampling: from a run folder (its newest checkpoint), a checkpoint, or any
saved Hugging Face model folder; and sampling with the recurrent cache."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ..data import load_tokenizer
from . import checkpoint
from .config import SampleConfig
from .errors import CheckpointError, UserError


def load(path: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer, folder)``: the model in eval mode on ``device`` and the tokenizer saved beside it
    (bytes if none was)."""
    path = Path(path)
    folder = path if (path / "config.json").is_file() else checkpoint.resolve(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder)
    except Exception as error:  # transformers / safetensors raise many types for unreadable folders
        raise CheckpointError(f"cannot load a model from {folder}: {error}") from error
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer of {folder} has {tokenizer.vocab_size} tokens, the model only "
                        f"{model.config.vocab_size}")
    return model.to(device).eval(), tokenizer, folder


@torch.no_grad()
def sample(model, tokenizer, config: SampleConfig) -> str:
    """The continuation of ``config.prompt`` (not including it), decoded. Generation keeps the recurrent memory
    state (``use_cache=True``), so each new token costs the same."""
    prompt = tokenizer.encode(config.prompt or "\n")
    device = next(model.parameters()).device
    input_ids = torch.as_tensor(prompt, device=device).unsqueeze(0)
    torch.manual_seed(config.seed)
    greedy = config.temperature <= 0
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True,
                            max_new_tokens=config.max_new_tokens,
                            do_sample=not greedy, temperature=None if greedy else config.temperature,
                            top_k=config.top_k or None, top_p=None, pad_token_id=0)
    return tokenizer.decode(output[0, input_ids.shape[1]:].tolist())
