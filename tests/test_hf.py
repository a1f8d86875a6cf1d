"""Hugging Face interop: the Auto classes after ``import nestedmemory``, saved folders that load without the package
(``trust_remote_code``), the tokenizers through ``AutoTokenizer``, and ``lm_eval --model hf`` on a checkpoint."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nestedmemory.data import ByteTokenizer, FileTokenizer, load_tokenizer
from nestedmemory.models import NestedMemoryForCausalLM, from_preset
from nestedmemory.train import checkpoint

#: one architecture of each kind of block: memory as the mixer, as context (MAC), self-modifying, attention.
REMOTE_PRESETS = ("titans-lmm", "titans-mac", "hope", "transformer++")
TEXT = "The cat sat on the mat.\nHéllo wörld — ✓"


def run_python(tmp_path, *args: str) -> str:
    """Run ``python *args`` in ``tmp_path``, offline, with a fresh Hugging Face home (module and dataset caches);
    its stdout."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def tiny(preset: str = "titans-lmm") -> NestedMemoryForCausalLM:
    torch.manual_seed(0)
    return from_preset(preset, size="tiny", vocab_size=256).eval()


def logits(model, text: str = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([list(text.encode())])).logits


def aligned(model):
    """``model`` with its weights copied out of the loaded file's buffer: there they lie unaligned, where vectorised
    sums round differently in the last bits, so computations are compared on aligned copies."""
    for p in model.parameters():
        p.data = p.data.clone()
    return model


def imported_modules(source: str) -> list[str]:
    """The top-level module names ``source`` imports: ``.`` for a sibling, ``..`` for a parent package."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level if node.level else node.module.split(".")[0])
    return names


def test_import_nestedmemory_registers_the_auto_classes(tmp_path):
    tiny().save_pretrained(tmp_path / "model")
    out = run_python(tmp_path, "-c", textwrap.dedent("""
        import nestedmemory
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        for auto in (AutoConfig, AutoModel, AutoModelForCausalLM):
            print(type(auto.from_pretrained("model")).__module__)
    """))
    assert out.split() == ["nestedmemory.models.config"] + ["nestedmemory.models.modeling"] * 2


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = aligned(AutoModelForCausalLM.from_pretrained(tmp_path).eval())
    assert type(loaded) is NestedMemoryForCausalLM  # the installed package's class, not the bundled copy
    assert torch.equal(logits(loaded), logits(model))
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "nestedmemory_models_modeling.NestedMemoryForCausalLM"
    for file in tmp_path.glob("*.py"):  # flat: no subpackage, no import of the package
        assert not {"..", "nestedmemory"} & set(imported_modules(file.read_text())), file.name


def test_trust_remote_code_loads_without_the_package(tmp_path):
    """Each saved folder loads in an interpreter where ``import nestedmemory`` fails, to the same logits; a loaded
    copy saves again (``transformers`` copies the bundle) and reloads."""
    folders = [f"model_{i}" for i in range(len(REMOTE_PRESETS))]  # folder names become module names
    for preset, folder in zip(REMOTE_PRESETS, folders):
        model = tiny(preset)
        model.save_pretrained(tmp_path / folder)
        torch.save(logits(model), tmp_path / folder / "expected.pt")
    out = run_python(tmp_path, "-c", textwrap.dedent(f"""
        import sys
        sys.modules["nestedmemory"] = None  # the package cannot be imported
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(1)  # as in this session (conftest): the same summation order, the same floats
        torch.set_flush_denormal(True)
        ids = torch.tensor([{list(TEXT.encode())}])

        def load(folder):  # as aligned() in this file
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            for p in model.parameters():
                p.data = p.data.clone()
            return model

        for folder in {folders!r}:
            model = load(folder)
            with torch.no_grad():
                same = torch.equal(model(ids).logits, torch.load(folder + "/expected.pt"))
            print(type(model).__module__.split(".")[0], same)
        model.save_pretrained("again")
        with torch.no_grad():
            print("again", torch.equal(load("again")(ids).logits, torch.load(folder + "/expected.pt")))
    """))
    assert out.splitlines() == ["transformers_modules True"] * len(REMOTE_PRESETS) + ["again True"]


def test_byte_tokenizer_through_auto_tokenizer(tmp_path):
    ByteTokenizer().save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert (len(hf), hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (256, 0, 0, 0)
    every_byte = "".join(map(chr, range(1, 256))) + "Ā\x00"  # Ā is byte 0's character in GPT-2's byte alphabet
    for text in ("héllo\n", TEXT, every_byte, ""):
        ids = hf(text).input_ids
        assert ids == list(text.encode()) == ByteTokenizer().encode(text).tolist()  # nothing prepended
        assert hf.decode(ids) == text
    assert hf.decode([0xFF]) == ByteTokenizer().decode([0xFF]) == "\ufffd"
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_file_tokenizer_through_auto_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["to be or not to be"] * 20, trainer)
    bpe.save(str(tmp_path / "bpe.json"))
    tokenizer = load_tokenizer(tmp_path / "bpe.json")
    tokenizer.save(tmp_path / "model")
    hf = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert hf("to be, or not").input_ids == tokenizer.encode("to be, or not").tolist()
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (None, None, None)  # none invented
    assert isinstance(load_tokenizer(tmp_path / "model"), FileTokenizer)


def log_likelihood(model, context: list[int], continuation: list[int]) -> float:
    """``log p(continuation | context)`` under ``model``, summed over the continuation's tokens."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        log_probs = model(ids[:, :-1]).logits.float().log_softmax(-1)[0, len(context) - 1:]
    return log_probs.gather(-1, torch.tensor(continuation)[:, None]).sum().item()


#: two local lm-eval tasks over one JSONL file: a perplexity (rolling log-likelihood) and a multiple choice.
LM_EVAL_TASKS = {
    "nm_rolling": """
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list: [{metric: bits_per_byte}]
    """,
    "nm_choice": """
        output_type: multiple_choice
        doc_to_text: "{{context}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: "{{label}}"
        metric_list: [{metric: acc}]
    """,
}


def write_task(folder, name: str, data) -> None:
    source = f"task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
    (folder / f"{name}.yaml").write_text(source + textwrap.dedent(LM_EVAL_TASKS[name]))


def test_lm_eval_reads_a_run_offline(tmp_path):
    """The README's ``lm_eval --model hf`` command line on a run folder (its newest checkpoint), two local tasks, no network: its
    log-likelihoods are the model's own (so it fed the model the byte ids, with NUL as the rolling prefix)."""
    pytest.importorskip("lm_eval", reason="needs lm-eval (pip install nestedmemory[eval])")
    pytest.importorskip("accelerate", reason="lm-eval's hf model needs lm-eval[hf] (pip install nestedmemory[eval])")
    model = tiny()
    checkpoint.save(tmp_path / "run", 1, model.config, model.state_dict(), ByteTokenizer(), {}, keep=1)
    folder = tmp_path / "run"  # the run folder links its newest checkpoint
    doc = {"text": TEXT, "context": "The cat sat on the", "choices": ["mat", "moon"], "label": 0}
    (tmp_path / "docs.jsonl").write_text(json.dumps(doc) + "\n")
    (tmp_path / "tasks").mkdir()
    for name in LM_EVAL_TASKS:
        write_task(tmp_path / "tasks", name, tmp_path / "docs.jsonl")
    run_python(tmp_path, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={folder},trust_remote_code=True", "--tasks", ",".join(LM_EVAL_TASKS),
               "--include_path", "tasks", "--device", "cpu", "--batch_size", "1", "--output_path", "out",
               "--log_samples")
    (results,) = (tmp_path / "out").rglob("results_*.json")
    assert math.isfinite(json.loads(results.read_text())["results"]["nm_rolling"]["bits_per_byte,none"])
    samples = {name: json.loads(next((tmp_path / "out").rglob(f"samples_{name}_*.jsonl")).read_text())
               for name in LM_EVAL_TASKS}
    rolling = float(samples["nm_rolling"]["resps"][0][0])
    assert rolling == pytest.approx(log_likelihood(model, [0], list(TEXT.encode())), rel=1e-5)
    choices = [float(resp[0][0]) for resp in samples["nm_choice"]["resps"]]
    expected = [log_likelihood(model, list(doc["context"].encode()), list(f" {choice}".encode()))
                for choice in doc["choices"]]
    assert choices == pytest.approx(expected, rel=1e-5)
