"""BABILong-style reasoning in a haystack (Kuratov et al. 2024), byte-level (vocabulary 256): an in-repo simulator of
bAbI tasks qa1–qa5 (Weston et al. 2015) whose facts are hidden in background text — not the official bAbI or
BABILong sets (both are downloads).

Stories use bAbI's world: actors Mary, John, Daniel, Sandra; six locations; three objects; bAbI's verbs.

- ``qa1`` single supporting fact: moves; "Where is Mary?" → her last location.
- ``qa2`` two supporting facts: moves, pick-ups and drops; "Where is the apple?" → where its holder is (or where
  it was dropped).
- ``qa3`` three supporting facts: "Where was the apple before the kitchen?" → the place the object was in before it
  reached the kitchen (a place it visited once).
- ``qa4`` two-argument relations: "The kitchen is north of the bedroom." + one more fact; "What is north of the
  bedroom?" or "What is the kitchen north of?".
- ``qa5`` three-argument relations: hand-overs "Mary gave the milk to John." among moves; a question on the last
  hand-over ("Who gave the milk to John?", "Who did Mary give the milk to?", "What did Mary give to John?",
  "Who received the milk?").

BABILong's insertion rule: the fact sentences, in order, go at sorted random sentence (or line) boundaries of
background text — here the embedded Shakespeare corpus instead of PG19 — which fills the example to exactly
``seq_len`` bytes; the question follows as "\\nQuestion: … \\nAnswer: " and the one-word answer, whose bytes are
scored together (exact match under teacher forcing; BABILong checks that the answer occurs in the output).
"""

from __future__ import annotations

import numpy as np
import torch

from . import haystack
from .common import IGNORE, batch, check_choice, check_int, encode_bytes, rng_for, score, summarize

ACTORS = ("Mary", "John", "Daniel", "Sandra")
LOCATIONS = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "apple", "milk")
MOVE_VERBS = ("moved", "went", "journeyed", "travelled")
GET_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "passed", "handed")
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}
TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
QUESTION = "\nQuestion: {question}\nAnswer: "


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


class _World:
    """bAbI's simulated world: where each actor is, who holds what, and where each object has been."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.facts = rng, []
        self.place: dict[str, str] = {}  # actor → location
        self.holder: dict[str, str] = {}  # object → actor
        self.trail: dict[str, list[str]] = {o: [] for o in OBJECTS}  # object → locations visited, in order

    def where(self, obj: str) -> str | None:
        return self.place.get(self.holder[obj]) if obj in self.holder else (self.trail[obj] or [None])[-1]

    def _visit(self, obj: str) -> None:
        location = self.where(obj)
        if location is not None and (not self.trail[obj] or self.trail[obj][-1] != location):
            self.trail[obj].append(location)

    def move(self) -> None:
        actor = _pick(self.rng, ACTORS)
        self.place[actor] = _pick(self.rng, [x for x in LOCATIONS if x != self.place.get(actor)])
        self.facts.append(f"{actor} {_pick(self.rng, MOVE_VERBS)} to the {self.place[actor]}.")
        for obj, holder in self.holder.items():
            if holder == actor:
                self._visit(obj)

    def get(self) -> bool:
        """A placed actor picks up a free object lying where they are (or not yet seen anywhere)."""
        actors = [a for a in ACTORS if a in self.place]
        if not actors:
            return False
        actor = _pick(self.rng, actors)
        free = [o for o in OBJECTS if o not in self.holder and self.where(o) in (None, self.place[actor])]
        if not free:
            return False
        obj = _pick(self.rng, free)
        self.holder[obj] = actor
        self.facts.append(f"{actor} {_pick(self.rng, GET_VERBS)} the {obj}.")
        self._visit(obj)
        return True

    def drop(self) -> bool:
        if not self.holder:
            return False
        obj = _pick(self.rng, sorted(self.holder))
        self.facts.append(f"{self.holder.pop(obj)} {_pick(self.rng, DROP_VERBS)} the {obj}.")
        return True

    def run(self, num_facts: int, p_move: float = 0.5) -> None:
        while len(self.facts) < num_facts:
            if self.rng.random() < p_move or not (self.get() if self.rng.random() < 0.7 else self.drop()):
                self.move()


def _qa1(rng, num_facts):
    world = _World(rng)
    for _ in range(num_facts):
        world.move()
    actor = _pick(rng, sorted(world.place))
    return world.facts, f"Where is {actor}?", world.place[actor]


def _qa2(rng, num_facts):
    while True:
        world = _World(rng)
        world.run(num_facts)
        known = [o for o in OBJECTS if world.where(o) is not None]
        if known:
            obj = _pick(rng, known)
            return world.facts, f"Where is the {obj}?", world.where(obj)


def _qa3(rng, num_facts):
    while True:
        world = _World(rng)
        world.run(num_facts)
        cases = [(o, i) for o in OBJECTS for i in range(1, len(world.trail[o]))
                 if world.trail[o].count(world.trail[o][i]) == 1]
        if cases:
            obj, i = cases[int(rng.integers(len(cases)))]
            trail = world.trail[obj]
            return world.facts, f"Where was the {obj} before the {trail[i]}?", trail[i - 1]


def _qa4(rng, num_facts):
    first, middle, last = (LOCATIONS[i] for i in rng.permutation(len(LOCATIONS))[:3])
    direction = _pick(rng, sorted(DIRECTIONS))
    relations = [(first, direction, middle), (last, DIRECTIONS[direction], middle)]
    facts = [f"The {a} is {d} of the {b}." for a, d, b in relations]
    a, d, b = relations[int(rng.integers(2))]
    if rng.random() < 0.5:
        return facts, f"What is {d} of the {b}?", a
    return facts, f"What is the {a} {d} of?", b


def _qa5(rng, num_facts):
    world = _World(rng)
    for actor in ACTORS:
        world.place[actor] = _pick(rng, LOCATIONS)
        world.facts.append(f"{actor} {_pick(rng, MOVE_VERBS)} to the {world.place[actor]}.")
    for obj in OBJECTS:
        world.holder[obj] = _pick(rng, ACTORS)
        world.facts.append(f"{world.holder[obj]} {_pick(rng, GET_VERBS)} the {obj}.")
    last = None
    while len(world.facts) < num_facts or last is None:
        if last is not None and rng.random() < 0.3:
            world.move()
            continue
        obj = _pick(rng, OBJECTS)
        giver, receiver = world.holder[obj], _pick(rng, [a for a in ACTORS if a != world.holder[obj]])
        world.holder[obj], last = receiver, (giver, obj, receiver)
        world.facts.append(f"{giver} {_pick(rng, GIVE_VERBS)} the {obj} to {receiver}.")
    giver, obj, receiver = last
    return world.facts, *[
        (f"Who gave the {obj} to {receiver}?", giver), (f"Who did {giver} give the {obj} to?", receiver),
        (f"What did {giver} give to {receiver}?", obj), (f"Who received the {obj}?", receiver),
    ][int(rng.integers(4))]


_STORIES = dict(qa1=_qa1, qa2=_qa2, qa3=_qa3, qa4=_qa4, qa5=_qa5)


def story(rng: np.random.Generator, task: str, num_facts: int = 8) -> tuple[list[str], str, str]:
    """One bAbI-style story of task ``task``: (fact sentences, question, one-word answer)."""
    return _STORIES[check_choice("task", task, _STORIES)](rng, check_int("num_facts", num_facts))


def generate(n: int, *, seed: int, vocab_size: int = 256, seq_len: int = 1024, tasks=TASKS,
             num_facts: int = 8) -> dict:
    """``n`` examples of ``seq_len`` bytes, example ``i`` of task ``tasks[i % len(tasks)]`` with about
    ``num_facts`` facts (qa4 always has two). Metadata: ``task`` (1–5), ``fact_positions`` (``[n, max facts]``
    byte offsets of the fact sentences, -1 past the last)."""
    n, seq_len = check_int("n", n), check_int("seq_len", seq_len)
    if check_int("vocab_size", vocab_size) < 256:
        raise ValueError(f"vocab_size must be >= 256 for byte-level tokens, got {vocab_size}")
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty sequence of names from {TASKS}, got {tasks!r}")
    rng = rng_for(seed)
    input_ids = np.empty((n, seq_len), dtype=np.int64)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    task_of, positions = np.empty(n, dtype=np.int64), []
    for i in range(n):
        task = tasks[i % len(tasks)]
        facts, question, answer = story(rng, task, num_facts)
        sentences = [encode_bytes(fact + " ") for fact in facts]
        tail = encode_bytes(QUESTION.format(question=question) + answer)
        background = seq_len - sum(map(len, sentences)) - len(tail)
        if background < 0:
            raise ValueError(f"seq_len={seq_len} is too short: the story and question alone take "
                             f"{seq_len - background} bytes")
        text, offsets = haystack.cut(rng, "essay", background)
        where = np.sort(rng.choice(offsets, size=len(sentences)))
        input_ids[i] = np.concatenate([haystack.insert(text, where, sentences), tail])
        answer_length = len(answer.encode())
        labels[i, seq_len - answer_length:] = input_ids[i, seq_len - answer_length:]
        task_of[i] = TASKS.index(task) + 1
        shifts = np.concatenate([[0], np.cumsum([len(s) for s in sentences])[:-1]])
        positions.append(where + shifts)
    fact_positions = np.full((n, max(map(len, positions))), -1, dtype=np.int64)
    for i, row in enumerate(positions):
        fact_positions[i, :len(row)] = row
    return batch(input_ids, labels, vocab_size, task=task_of, fact_positions=fact_positions)


def evaluate(model, *, n: int, seed: int, batch_size: int, lengths=(512, 1024), tasks=TASKS,
             num_facts: int = 8) -> dict:
    """Exact-match accuracy over ``n`` examples per length (tasks in turn): overall, per ``task`` (``qa1`` …),
    per ``length``, and the (task, length) ``grid``."""
    if not lengths:
        raise ValueError("lengths must be a non-empty sequence of sequence lengths")
    hits, totals, task_of, length_of, grid = [], [], [], [], []
    for length in lengths:
        data = generate(n, seed=seed, seq_len=length, tasks=tasks, num_facts=num_facts)
        h, t = score(model, data, batch_size=batch_size)
        per_task = summarize(h, t, exact=True, groups={"task": data["task"]})["task"]
        grid += [dict(task=f"qa{k}", length=length, accuracy=a) for k, a in per_task.items()]
        hits.append(h), totals.append(t), task_of.append(data["task"])
        length_of.append(torch.full_like(h, length))
    out = summarize(torch.cat(hits), torch.cat(totals), exact=True,
                    groups={"task": torch.cat(task_of), "length": torch.cat(length_of)})
    out["task"] = {f"qa{k}": a for k, a in out["task"].items()}
    return dict(out, grid=grid)
