"""Task suites: generators are deterministic and right (checked by independent code here), evaluation returns
accuracies in [0, 1], an oracle scores 1, a briefly trained tiny model beats chance, reports are written, and bad
arguments raise ValueErrors that name them."""

import json
import re

import pytest
import torch
from torch import nn

from nestedmemory.models import from_preset
from nestedmemory.tasks import SUITES, babilong, continual, formal, mad, mqar, niah, train_on_task
from nestedmemory.tasks.common import decode_bytes
from nestedmemory.tasks.report import needle_heatmap, write_report



#: suite → small generator options (every generate call below is cheap).
SMALL = {
    "mqar": dict(vocab_size=64, seq_len=64, num_kv_pairs=8),
    "mad": dict(task="in_context_recall", vocab_size=16, seq_len=64),
    "niah": dict(seq_len=200, variant="number"),
    "babilong": dict(seq_len=400),
    "formal": dict(language="shuffle2", bins=((1, 20), (21, 30))),
    "continual": dict(seq_len=20, classes=[1, 3]),
}


def tiny(vocab_size=256, preset="transformer++"):
    torch.manual_seed(0)
    return from_preset(preset, size="tiny", vocab_size=vocab_size).eval()


class Oracle(nn.Module):
    """A fake causal LM that knows the answers: for a known input row, the logits at t − 1 are one-hot at
    ``labels[t]``."""

    def __init__(self, vocab_size, *datasets):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": vocab_size})()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.answers = {tuple(x.tolist()): y for data in datasets for x, y in zip(data["input_ids"], data["labels"])}

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        for row, x in enumerate(input_ids):
            target = self.answers[tuple(x.tolist())][1:].clamp(min=0)
            logits[row, :-1].scatter_(1, target[:, None], 1.0)
        return type("Output", (), {"logits": logits})()


# ---------------------------------------------------------------------------------------------------------------
# generators: deterministic, well-formed
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL)
def test_generate_is_deterministic_and_well_formed(name):
    suite, options = SUITES[name], SMALL[name]
    a, b, c = (suite.generate(6, seed=s, **options) for s in (3, 3, 4))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].dtype == a["labels"].dtype == torch.long
    assert a["input_ids"].shape == a["labels"].shape and a["input_ids"].shape[0] == 6
    assert (a["labels"][:, 0] == -100).all() and (a["labels"] != -100).any(1).all()


def test_mqar_answers_are_the_values_of_the_queried_keys():
    data = mqar.generate(20, seed=0, **SMALL["mqar"])
    for x, y in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        pairs = dict(zip(x[0:16:2], x[1:16:2]))
        assert len(pairs) == 8 and all(k < 32 <= v for k, v in pairs.items())
        scored = [t for t in range(len(y)) if y[t] != -100]
        assert sorted(x[t - 1] for t in scored) == sorted(pairs)  # every key is queried once
        assert all(y[t] == pairs[x[t - 1]] for t in scored)


def test_mad_recall_copying_compression_memorization_targets():
    data = mad.generate(10, seed=0, **SMALL["mad"])
    for x, y in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        for t in (t for t in range(len(y)) if y[t] != -100):
            earlier = [x[s + 1] for s in range(0, t - 1, 2) if x[s] == x[t - 1]]
            assert earlier and all(v == y[t] for v in earlier)  # the value the key had before
    data = mad.generate(10, seed=0, task="selective_copying", seq_len=40, num_tokens_to_copy=6)
    for x, y in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        copy = x.index(15)
        assert [v for v in y if v != -100] == [t for t in x[:copy] if t != 14] and len(x) - copy - 1 == 6
    data = mad.generate(4, seed=0, task="compression", seq_len=21)
    assert torch.equal(data["labels"][:, 11:21], data["input_ids"][:, :10]) and (data["input_ids"][:, 10] == 15).all()
    data = mad.generate(4, seed=0, task="memorization")
    table = mad.kv_map(255)
    assert torch.equal(data["labels"][:, 1::2], torch.as_tensor(table)[data["input_ids"][:, 0::2]])
    assert len(set(table.tolist())) == len(table)  # a one-to-one map
    fuzzy = mad.generate(10, seed=0, task="fuzzy_in_context_recall", training=True)
    tokens = fuzzy["input_ids"][:, 1:]
    assert torch.equal(fuzzy["labels"][:, 1:], torch.where(tokens == 15, -100, tokens))  # next tokens, not the padding


COUNTER_LETTERS = {"anbn": "ab", "anbncn": "abc"}


def _depths_never_negative(s):
    depth = {"(": 0, "[": 0}
    for c in s:
        opener = {")": "(", "]": "["}.get(c, c)
        depth[opener] += 1 if c == opener else -1
        if depth[opener] < 0:
            return None
    return depth


def _member(language, s):
    """Membership, written independently of the generators."""
    if language == "parity":
        return set(s) <= set("01") and s.count("1") % 2 == 0
    if language == "aa_star":
        return re.fullmatch("(aa)*", s) is not None
    if language == "abab_star":
        return re.fullmatch("(abab)*", s) is not None
    if language in COUNTER_LETTERS:
        n = len(s) // len(COUNTER_LETTERS[language])
        return n > 0 and s == "".join(c * n for c in COUNTER_LETTERS[language])
    return _depths_never_negative(s) == {"(": 0, "[": 0}


def _continues(language, s):
    """Whether some member string starts with ``s``."""
    if language == "shuffle2":
        return _depths_never_negative(s) is not None
    blocks = re.fullmatch("(a*)(b*)(c*)" if language == "anbncn" else "(a*)(b*)()", s)
    if blocks is None:
        return False
    i, j, k = map(len, blocks.groups())
    return (k == 0 and j <= i) or (language == "anbncn" and 0 < j == i and k <= i)


@pytest.mark.parametrize("language", formal.LANGUAGES)
def test_formal_strings_and_labels_match_an_independent_checker(language):
    spec = formal.LANGUAGES[language]
    data = formal.generate(24, seed=1, language=language, bins=((1, 16), (17, 24)))
    assert set(data["bin"].tolist()) == {0, 1}
    for x, y, length, b in zip(data["input_ids"], data["labels"], data["length"], data["bin"]):
        s = "".join(spec.alphabet[t - 1] for t in x[:length].tolist())
        assert _member(language, s) and (1 <= length <= 16 if b == 0 else 17 <= length <= 24)
        assert (x[length:] == 0).all() and (y[length + 1:] == -100).all()
        for t in range(1, int(length) + 1):
            output = spec.outputs[int(y[t]) - 5]
            if spec.outputs == ("out", "in"):
                assert (output == "in") == _member(language, s[:t])
            else:  # the set of valid next characters, by brute force
                allowed = {c for c in spec.alphabet if _continues(language, s[:t] + c)}
                allowed |= {"end"} if _member(language, s[:t]) else set()
                assert set(output.strip("{}").split(",")) == allowed, (s[:t], output)


def test_niah_needle_is_at_the_stated_depth_and_answers_are_its_value():
    for variant in niah.VARIANTS:
        data = niah.generate(10, seed=0, seq_len=400, variant=variant, depths=(0.0, 0.3, 0.7, 1.0))
        for x, y, depth, at, hay in zip(data["input_ids"], data["labels"], data["depth"].tolist(),
                                        data["needle_position"].tolist(), data["haystack_length"].tolist()):
            text = decode_bytes(x)
            needle = re.search(r"One of the special magic (number|uuid)s for (\S+) is: (\S+)\. ", text)
            answer = decode_bytes(y[y != -100])
            assert needle.start() == at and needle.group(3) == answer
            assert text.endswith(f"The special magic {needle.group(1)} for {needle.group(2)} is: {answer}")
            assert len(answer) == (36 if variant == "uuid" else 7)
            if depth in (0.0, 1.0):
                assert at == depth * hay
            else:  # at a sentence or line start
                assert re.search(r"([.!?] |\n)$", text[:at])
            if variant == "passkey":  # short sentences: the nearest start is within one sentence
                assert abs(at - depth * hay) <= len("There and back again. ")
    assert set(niah.generate(9, seed=0, seq_len=300, depths=(0.0, 0.5, 1.0))["depth"].tolist()) == {0.0, 0.5, 1.0}


def test_babilong_answers_follow_from_the_hidden_facts():
    data = babilong.generate(30, seed=0, seq_len=700)
    for x, y, task, starts in zip(data["input_ids"], data["labels"], data["task"], data["fact_positions"]):
        text, answer = decode_bytes(x), decode_bytes(y[y != -100])
        facts = [re.match(r"[^.]*\.", text[s:]).group(0) for s in starts.tolist() if s >= 0]
        question = re.search(r"\nQuestion: (.*)\nAnswer: ", text).group(1)
        if task == 1:
            actor = question.split()[-1][:-1]
            moves = [f.split()[-1][:-1] for f in facts if f.startswith(actor)]
            assert moves[-1] == answer
        elif task == 4:
            forward = re.fullmatch(r"What is (\w+) of the (\w+)\?", question)
            if forward:
                assert f"The {answer} is {forward[1]} of the {forward[2]}." in facts
            else:
                backward = re.fullmatch(r"What is the (\w+) (\w+) of\?", question)
                assert f"The {backward[1]} is {backward[2]} of the {answer}." in facts
        elif task == 5:
            hand_overs = [f for f in facts if re.search(" (gave|passed|handed) the ", f)]
            assert answer in hand_overs[-1]
        assert answer in " ".join(facts)


def test_continual_labels_are_class_tokens_of_the_requested_classes():
    data = continual.generate(50, seed=0, **SMALL["continual"])
    assert set(data["label"].tolist()) == {1, 3}
    assert torch.equal(data["labels"][:, -1], 9 + data["label"]) and (data["input_ids"][:, -2:] == 8).all()
    assert continual.split_tasks(6, 2) == [[0, 1], [2, 3], [4, 5]]


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------

FORMAL = dict(language="anbncn", bins=((1, 12), (13, 24)))
EVALUATIONS = {  # suite → (model vocabulary, evaluate options, the generate calls evaluate makes)
    "mqar": (64, SMALL["mqar"], [SMALL["mqar"]]),
    "mad": (16, SMALL["mad"], [SMALL["mad"]]),
    "niah": (256, dict(lengths=(160, 240)), [dict(seq_len=n, depths=niah.DEPTHS) for n in (160, 240)]),
    "babilong": (256, dict(lengths=(500,), num_facts=4), [dict(seq_len=500, num_facts=4)]),
    "formal": (16, FORMAL, [FORMAL]),
    "continual": (19, SMALL["continual"], [SMALL["continual"]]),
}


def _accuracies(result):
    for key, value in result.items():
        if isinstance(value, dict):
            yield from value.values()
        elif isinstance(value, list):
            yield from (cell["accuracy"] for cell in value)
        else:
            yield value


@pytest.mark.parametrize("name", EVALUATIONS)
def test_evaluate_gives_accuracies_and_an_oracle_scores_one(name):
    vocab_size, options, calls = EVALUATIONS[name]
    suite = SUITES[name]
    result = suite.evaluate(tiny(vocab_size), n=8, seed=5, batch_size=4, **options)
    assert all(0.0 <= a <= 1.0 for a in _accuracies(result)) and "accuracy" in result
    oracle = Oracle(vocab_size, *(suite.generate(8, seed=5, **call) for call in calls))
    perfect = suite.evaluate(oracle, n=8, seed=5, batch_size=3, **options)
    assert all(a == 1.0 for a in _accuracies(perfect)), perfect
    if name == "niah":
        assert {cell["length"] for cell in result["grid"]} == {160, 240} and len(result["depth"]) == 5
    if name == "formal":
        assert set(result["bin"]) == {"0", "1"} and "token_accuracy" in result


def test_a_briefly_trained_model_beats_chance():
    model = tiny(formal.VOCAB_SIZE)
    options = dict(language="anbn", bins=((1, 20),))
    before = formal.evaluate(model, n=64, seed=9, batch_size=32, **options)
    losses = train_on_task(model, "formal", steps=60, batch_size=32, lr=3e-3, seed=0, **options)
    after = formal.evaluate(model, n=64, seed=9, batch_size=32, **options)
    assert losses[-1] < losses[0] / 4
    assert after["token_accuracy"] > 0.9 > before["token_accuracy"] and after["accuracy"] > 0.5


def test_training_stops_early_once_the_target_is_reached():
    """``until`` is asked every ``check_every`` steps with the model in eval mode; the run stops at the first yes,
    and the steps before it are those of the full run (same seeds, same schedule)."""
    asked = []

    def until(model):
        asked.append(model.training)
        return len(asked) == 2

    options = dict(steps=7, batch_size=4, lr=3e-3, seed=0, language="parity", bins=((1, 8),))
    torch.manual_seed(0)
    model = tiny(formal.VOCAB_SIZE)
    stopped = train_on_task(model, "formal", until=until, check_every=2, **options)
    assert asked == [False, False] and len(stopped) == 4 and not model.training
    torch.manual_seed(0)
    assert train_on_task(tiny(formal.VOCAB_SIZE), "formal", **options)[:4] == stopped


def test_run_continual_reports_a_forgetting_matrix():
    result = continual.run_continual("transformer++", num_classes=4, classes_per_task=2, steps_per_task=5,
                                     eval_n=16, seq_len=12)
    matrix = result["matrix"]
    assert len(matrix) == 2 and matrix[0][1] is None
    assert all(0 <= a <= 1 for row in matrix for a in row if a is not None)
    assert 0 <= result["average_accuracy"] <= 1 and result["parameters"] > 0


# ---------------------------------------------------------------------------------------------------------------
# reports and the formal-languages command
# ---------------------------------------------------------------------------------------------------------------

def test_reports_and_the_formal_command(tmp_path):
    md, js = write_report(tmp_path / "t.md", title="T", header=["a", "b"], rows=[[1, "x"]], data={"k": 1})
    assert "| a | b |" in md.read_text() and json.loads(js.read_text()) == {"k": 1}
    pytest.importorskip("matplotlib")
    grid = [dict(depth=d, length=n, accuracy=0.5) for d in (0.0, 1.0) for n in (256, 512)]
    assert needle_heatmap(grid, tmp_path / "h.png").stat().st_size > 0
    formal.main(["--presets", "transformer++", "--languages", "anbn", "parity", "--steps", "3", "--eval-n", "8",
                 "--out", str(tmp_path / "f.md")])
    text = (tmp_path / "f.md").read_text()
    assert "| Model | parameters | aⁿbⁿ | Parity |" in text and "| transformer++ |" in text
    assert len(json.loads((tmp_path / "f.json").read_text())["results"]) == 2


# ---------------------------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: mqar.generate(2, seed=0, vocab_size=64, seq_len=16, num_kv_pairs=8), "seq_len"),
    (lambda: mqar.generate(0, seed=0), "n"),
    (lambda: mqar.generate(2, seed=-1), "seed"),
    (lambda: mad.generate(2, seed=0, task="copying"), "task"),
    (lambda: mad.generate(2, seed=0, task="in_context_recall", seq_len=65), "seq_len"),
    (lambda: mad.generate(2, seed=0, task="noisy_in_context_recall", frac_noise=1.5), "frac_noise"),
    (lambda: niah.generate(2, seed=0, vocab_size=128), "vocab_size"),
    (lambda: niah.generate(2, seed=0, seq_len=50), "seq_len"),
    (lambda: niah.generate(2, seed=0, depths=(0.5, 2.0)), "depths"),
    (lambda: babilong.generate(2, seed=0, tasks=("qa9",)), "task"),
    (lambda: formal.generate(2, seed=0, language="dyck"), "language"),
    (lambda: formal.generate(2, seed=0, language="abab_star", bins=((1, 3),)), "bins"),
    (lambda: formal.generate(2, seed=0, vocab_size=6), "vocab_size"),
    (lambda: continual.generate(2, seed=0, classes=[12]), "classes"),
    (lambda: continual.split_tasks(5, 2), "classes_per_task"),
    (lambda: train_on_task(tiny(), "imagenet", steps=1, batch_size=1, lr=1e-3, seed=0), "suite"),
    (lambda: train_on_task(tiny(), "mqar", steps=0, batch_size=1, lr=1e-3, seed=0), "steps"),
    (lambda: train_on_task(tiny(), "mqar", steps=1, batch_size=1, lr=1e-3, seed=0, check_every=0), "check_every"),
    (lambda: train_on_task(tiny(), "mqar", steps=1, batch_size=1, lr=1e-3, seed=0, until=0.9), "until"),
    (lambda: formal.evaluate(tiny(6), n=2, seed=0, batch_size=2), "vocabulary"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()
