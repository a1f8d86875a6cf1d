"""``generate`` under the installed ``transformers`` (CI installs the newest the project allows): the cache argument
under both of its names, left-padded batches, beam search, and no deprecation warnings from our own calls. Every
preset at the tiny size, fp64 (no near-tie can flip an argmax)."""

import os
import subprocess
import sys

import pytest
import torch

from nestedmemory.models import PRESETS, from_preset
from nestedmemory.models.modeling import CACHE_FIELD, cache_of

presets = pytest.mark.parametrize("name", PRESETS)


def make(name):
    torch.manual_seed(0)
    return from_preset(name).double().eval()


def prompts(lengths, seed=1):
    """A left-padded batch of random prompts of ``lengths`` (pad id 0) and its attention mask."""
    width = max(lengths)
    x = torch.randint(1, 256, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(x)
    for i, n in enumerate(lengths):
        x[i, :width - n], mask[i, :width - n] = 0, 0
    return x, mask


@presets
@torch.no_grad()
def test_left_padded_batch_generates_what_each_prompt_generates_alone(name):
    model, new = make(name), 6
    x, mask = prompts((9, 4, 6))
    batch = model.generate(x, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    for i, n in enumerate((9, 4, 6)):
        alone = model.generate(x[i:i + 1, x.shape[1] - n:], max_new_tokens=new, do_sample=False, pad_token_id=0)
        assert torch.equal(batch[i, -new:], alone[0, -new:]), i


@presets
@torch.no_grad()
def test_beam_search_with_the_cache_equals_beam_search_without(name):
    model, (x, _) = make(name), prompts((5, 5))
    settings = dict(max_new_tokens=4, do_sample=False, num_beams=3, pad_token_id=0)
    cached = model.generate(x, use_cache=True, **settings)
    uncached = model.generate(x, use_cache=False, **settings)
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_left_padded_beam_search_reorders_the_row_states():
    model, new = make("titans-mac"), 4
    x, mask = prompts((7, 3))
    settings = dict(max_new_tokens=new, do_sample=False, num_beams=2, pad_token_id=0)
    batch = model.generate(x, attention_mask=mask, **settings)
    for i, n in enumerate((7, 3)):
        assert torch.equal(batch[i, -new:], model.generate(x[i:i + 1, x.shape[1] - n:], **settings)[0, -new:])


@torch.no_grad()
def test_cache_is_accepted_under_both_names():
    model, (x, _) = make("titans-lmm"), prompts((6, 6))
    a = cache_of(model(x[:, :4], use_cache=True))
    b = cache_of(model(x[:, :4], use_cache=True))
    new = model(x[:, 4:], cache=a, use_cache=True).logits
    old = model(x[:, 4:], past_key_values=b, use_cache=True).logits
    assert torch.equal(new, old)
    torch.testing.assert_close(new, model(x).logits[:, 4:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="pass the decoding cache once"):
        model(x[:, 4:], cache=a, past_key_values=b)


def test_generation_prints_no_deprecation_warning(tmp_path):
    script = ("import torch\nfrom nestedmemory.models import from_preset\nfrom nestedmemory.models.modeling import "
              "cache_of\nm = from_preset('titans-mac').eval()\nx = torch.randint(1, 256, (2, 5))\n"
              "m.generate(x, max_new_tokens=3, do_sample=False, pad_token_id=0)\n"
              "m.generate(x, attention_mask=torch.tensor([[1] * 5, [0, 0, 1, 1, 1]]), max_new_tokens=3, "
              "do_sample=False, num_beams=2, pad_token_id=0)\n"
              "out = m(x, use_cache=True)\nassert cache_of(out) is not None and out.logits is not None\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "deprecat" not in (result.stdout + result.stderr).lower(), result.stderr
    assert CACHE_FIELD in ("cache", "past_key_values")
