"""Training and evaluation of graph sequence models on GSM++'s tasks (Behrouz et al., ICML 2025, arXiv 2411.15671;
:mod:`nestedmemory.graphs.tasks`): ``nestedmemory graph train`` and ``nestedmemory graph eval``.

The protocol: epochs over the shuffled training graphs (AdamW, the learning rate decayed to 0 over the run on a
cosine, gradient norm clipped); after every epoch the validation and test splits are scored, the weights of the
best validation score so far are kept (accuracy; RMSE for triangle counts and shortest paths; a tie counts as
better) and training stops early after ``patience`` epochs without a better one; the best model is tested.

The run folder is the other trainers' (:mod:`nestedmemory.train.loop`, :mod:`nestedmemory.timeseries.train`):
``config.yaml``, ``metrics.jsonl`` (one record per epoch), ``loss.png``, ``checkpoint-NNNNNN/`` folders written
atomically (:func:`~nestedmemory.train.checkpoint.save_folder`) with the newest linked into the run folder, the
run-folder lock, then ``results.json``. A checkpoint is ``config.json`` (the task and the arguments of
:func:`~nestedmemory.graphs.models.build_model`: what ``graph eval`` rebuilds the model from), ``model.safetensors``
(the best weights so far) and ``trainer_state.pt`` (the current weights, optimizer, epoch, step, best score and the
run's settings). A NaN or infinite loss, gradient, score or weight stops the run with one line before it reaches a
checkpoint. Needs ``networkx`` and ``torch_geometric``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch_geometric.data import Batch
from tqdm import tqdm

from ..tasks.report import markdown_table, write_report
from ..train import checkpoint, lock, metrics, resume
from ..train.config import (
    AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, InvalidSetting, Limit, RunEvalConfig, Settings, check_device, check_folder,
    check_names,
)
from ..train.errors import CheckpointError, UserError
from .branches import TOKENIZATIONS
from .mixers import NAMED
from .synthetic import ATLAS_NODES, FAMILIES
from .tokenize import POOLS
from .models import MODELS, build_model, count_parameters
from .tasks import TASKS, GraphTask, make_task

LOCALS = ("gatedgcn", "none")
#: fields a resumed run may change: how long it trains, where it runs and reports, not what it computes.
RESUMABLE = frozenset({"out", "resume", "epochs", "patience", "keep_checkpoints", "device", "progress"})
NORMS = ("layer_norm", "batch_norm", "none")
CONFIG_FILE, RESULTS_FILE, MODEL_CONFIG = "config.yaml", "results.json", "config.json"


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class GraphTrainConfig(Settings):
    """Train a graph sequence model (GSM++, GPS, GatedGCN) on a graph task; write a run folder.

    Args:
        task: degree, cycle, triangles, connectivity, colors, shortest_path (GSM++'s synthetic tasks), karate
            (Zachary's karate club) or lesmis (Les Misérables' communities) (node classification on graphs that ship
            in networkx), or pyg (the PyG dataset at ``data``)
        data: ``pyg``'s dataset: a file written by ``InMemoryDataset.save`` (or a PyG dataset's
            ``processed/data.pt``) or a TU-format folder; node- or graph-level, classes or values, as its ``y``
        model: gsm++ (any tokenisation and global mixer), gps (PyG's GPSConv) or gatedgcn
        mixer: gsm++'s global encoder: hybrid (2 × mamba2 + attention), attention, or a preset (mamba2, titans-lmm,
            …)
        tokenization: gsm++'s tokenisation: hac_dfs, degree, random, none (one sequence per graph), khop, hac_bfs
            (one per node) or mixture
        local: gsm++'s local MPNN in every layer: gatedgcn, or none (the global branch alone)
        pool: how gsm++'s khop / hac_bfs tokens encode their nodes: mean (GSM++'s reading) or sum
        pe: GSM++'s hierarchical positional encoding (every model)
        hidden: width
        layers: layers
        heads: attention heads
        norm: layer_norm (PyG's, per graph), batch_norm or none
        train_graphs: graphs in the training split (synthetic tasks)
        val_graphs: graphs in the validation split
        test_graphs: graphs in the test split
        family: graph family of the synthetic tasks (default: the task's): er, ba, sbm, holme_kim, regular,
            geometric, tree, tree_plus, forest (sparse trees: long-range connectivity), complete, star, path or
            atlas (networkx's graph atlas, 5–7 nodes)
        min_nodes: fewest nodes of a synthetic graph
        max_nodes: most nodes of a synthetic graph
        num_colors: colours of the colour-counting task
        data_seed: seed of the synthetic graphs (karate, lesmis, pyg: of the split)
        batch_size: graphs per step
        lr: AdamW learning rate (decayed to 0 on a cosine)
        weight_decay: AdamW weight decay
        clip: gradient norm clip
        epochs: training epochs
        patience: epochs without a better validation score before stopping early
        keep_checkpoints: checkpoints kept in the run folder (the newest)
        out: run folder (default ``runs/graph-<model>-<task>-<date>-<time>``)
        resume: continue from a checkpoint, or the newest checkpoint of a run folder (with ``out``: into a new
            folder); only ``epochs``, ``patience``, ``keep_checkpoints``, ``device``, ``progress`` may change
        seed: random seed of initialisation and data order
        device: ``cpu``, ``cuda`` (default: cuda if available)
        progress: show a progress bar
    """

    task: str = "colors"
    data: str | None = None
    model: str = "gsm++"
    mixer: str = "hybrid"
    tokenization: str = "hac_dfs"
    local: str = "gatedgcn"
    pool: str = "mean"
    pe: bool = True
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    norm: str = "layer_norm"
    train_graphs: int = 256
    val_graphs: int = 64
    test_graphs: int = 256
    family: str | None = None
    min_nodes: int = 8
    max_nodes: int = 24
    num_colors: int = 3
    data_seed: int = 0
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    clip: float = 1.0
    epochs: int = 30
    patience: int = 10
    keep_checkpoints: int = 2
    out: str | None = None
    resume: str | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = True

    LIMITS = {"hidden": AT_LEAST_ONE, "layers": AT_LEAST_ONE, "heads": AT_LEAST_ONE, "train_graphs": AT_LEAST_ONE,
              "val_graphs": AT_LEAST_ONE, "test_graphs": AT_LEAST_ONE, "min_nodes": Limit(5),
              "max_nodes": Limit(5), "num_colors": AT_LEAST_ONE, "data_seed": NON_NEGATIVE,
              "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "clip": POSITIVE,
              "epochs": AT_LEAST_ONE, "patience": AT_LEAST_ONE, "keep_checkpoints": AT_LEAST_ONE,
              "seed": NON_NEGATIVE}

    def check(self) -> None:
        """Known names, consistent sizes, a device this machine has, an ``out`` that can be a folder — before
        anything is generated or written."""
        from ..models import PRESETS

        check_names("task", "task", [self.task], TASKS)
        if (self.task == "pyg") != (self.data is not None):
            raise InvalidSetting("--data PATH goes with --task pyg, and --task pyg needs --data PATH")
        if self.data is not None and not Path(self.data).exists():
            raise InvalidSetting(f"--data {self.data}: no such file or folder")
        if self.family is not None:
            check_names("family", "graph family", [self.family], FAMILIES)
            if self.family == "atlas" and self.max_nodes > ATLAS_NODES:
                raise InvalidSetting(f"--family atlas has graphs of at most {ATLAS_NODES} nodes: set --max_nodes "
                                     f"{ATLAS_NODES} or fewer (got {self.max_nodes})")
        check_names("model", "model", [self.model], MODELS)
        check_names("mixer", "mixer", [self.mixer], [*NAMED, *PRESETS])
        check_names("tokenization", "tokenization", [self.tokenization], [*TOKENIZATIONS, "mixture"])
        check_names("local", "local MPNN", [self.local], LOCALS)
        check_names("pool", "token pooling", [self.pool], POOLS)
        check_names("norm", "norm", [self.norm], NORMS)
        if self.max_nodes < self.min_nodes:
            raise InvalidSetting(f"--max_nodes {self.max_nodes} is below --min_nodes {self.min_nodes}")
        if self.hidden % self.heads:
            raise InvalidSetting(f"--heads {self.heads} must divide --hidden {self.hidden} (attention heads)")
        check_device("device", self.device)
        check_folder("out", self.out)


@dataclass
class GraphEvalConfig(RunEvalConfig):
    """Test a graph run's model (its best checkpoint) on the run's test split; print a table, write eval.md and
    eval.json.

    Args:
        batch_size: graphs per forward pass (default: the run's)
        out: folder of the table (default: the run folder)
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``mps``
    """


# ---------------------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------------------

def load_data(config: GraphTrainConfig) -> tuple[GraphTask, dict[str, list]]:
    """The task and its ``train`` / ``val`` / ``test`` splits (:func:`~nestedmemory.graphs.tasks.make_task`);
    unreadable data raise :class:`UserError`."""
    sizes = dict(train=config.train_graphs, val=config.val_graphs, test=config.test_graphs)
    try:
        task, splits = make_task(config.task, sizes, num_nodes=(config.min_nodes, config.max_nodes),
                                 num_colors=config.num_colors, family=config.family, data=config.data,
                                 seed=config.data_seed)
    except ValueError as error:
        raise UserError(str(error)) from None
    if not all(splits.values()):
        counts = ", ".join(f"{split} {len(graphs)}" for split, graphs in splits.items())
        raise UserError(f"task {config.task}: a split holds no graph ({counts} graphs): give more data")
    return task, splits


def build(config: GraphTrainConfig, task: GraphTask, example):
    """``config.model`` for ``task`` (``example``: a graph of its data), initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return build_model(config.model, example.x.shape[1], config.hidden, task.outputs, config.layers, task.level,
                       tokenization=config.tokenization, mixer=config.mixer, pe=config.pe,
                       conv=None if config.local == "none" else config.local, heads=config.heads,
                       norm=None if config.norm == "none" else config.norm, pe_levels=task.levels - 1,
                       pool=config.pool)


def batches(graphs: list, batch_size: int, order=None):
    """PyG batches of ``graphs`` in ``order`` (default: as stored), the last one smaller."""
    order = range(len(graphs)) if order is None else order
    for start in range(0, len(order), batch_size):
        yield Batch.from_data_list([graphs[int(i)] for i in order[start:start + batch_size]])


@torch.no_grad()
def test_scores(model, task: GraphTask, graphs: list, batch_size: int, device) -> dict[str, float]:
    """``task.scores`` of ``model`` (in eval mode) over every scored node or graph of ``graphs``."""
    was_training = model.training
    model.eval()
    pairs = [task.select(model(batch.to(device)), batch) for batch in batches(graphs, batch_size)]
    model.train(was_training)
    return task.scores(torch.cat([p[0] for p in pairs]).cpu(), torch.cat([p[1] for p in pairs]).cpu())


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------

def train(config: GraphTrainConfig) -> dict:
    """Run ``config``; returns ``run_dir``, ``step``, ``epoch``, ``best_epoch``, ``interrupted`` and ``results`` (the
    test scores of the best model; ``None`` if interrupted). Problems with the inputs raise
    :class:`~nestedmemory.train.errors.UserError` before anything is written; a NaN or infinite step, score or weight
    raises :class:`NonFiniteError`, leaving the newest checkpoint (the last finite state) as it was."""
    torch.set_flush_denormal(True)  # as the other trainers: decaying SSM states reach denormals, slow on CPUs
    return Trainer(config).run()


class Trainer:
    def __init__(self, config: GraphTrainConfig):
        self.config = config
        self.task, self.splits = load_data(config)
        resumed = None
        if config.resume is not None:
            self.source, *resumed = resume.load_resumed(config.resume, config, RESUMABLE, "graph run",
                                                        key="tokenization")
        self.run_dir = resume.run_folder(self.source if resumed else None, config.out,
                                         f"runs/graph-{config.model}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}",
                                         "nestedmemory graph train")
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build(config, self.task, self.splits["train"][0]).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.per_epoch = math.ceil(len(self.splits["train"]) / config.batch_size)
        total = config.epochs * self.per_epoch
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                          lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        #: epochs finished, batches done in the current one, steps in all, the current epoch's loss sum; the best
        #: validation (``score``, ``epoch``, ``step``) and its weights; epochs since
        self.epoch, self.batch, self.step, self.loss_sum = 0, 0, 0, 0.0
        self.best, self.best_weights, self.counter = None, None, 0
        if resumed:
            self._restore(*resumed)
        self.stop_requested = False

    def _restore(self, best_weights: dict, state: dict) -> None:
        """The weights, optimizer, schedule, random state and position of a checkpoint."""
        resume.restore(state, self.model, self.optimizer, self.schedule)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.loss_sum, self.best, self.counter = state["loss_sum"], state["best"], state["counter"]
        self.best_weights = best_weights if self.best is not None else None

    def run(self) -> dict:
        """Train in the run folder, holding its lock (released however the run ends), then test the best model
        unless interrupted (Ctrl-C: the current step ends, a checkpoint is written)."""
        run_lock = lock.RunLock(self.run_dir)
        run_lock.acquire()
        previous = signal.signal(signal.SIGINT, self._request_stop)
        try:
            self._start_run_folder()
            bar = tqdm(total=self.config.epochs * self.per_epoch, initial=self.step, unit="step", dynamic_ncols=True,
                       disable=not self.config.progress)
            with bar:
                while not self._done() and not self.stop_requested:
                    self._train_epoch(bar)
            summary = dict(run_dir=str(self.run_dir), step=self.step, epoch=self.epoch,
                           best_epoch=self.best and self.best["epoch"], interrupted=self.stop_requested)
            if self.stop_requested:
                print(f"interrupted at step {self.step}; resume with: nestedmemory graph train --resume {self.run_dir}")
                return dict(summary, results=None)
            return dict(summary, results=self._finish())
        finally:
            signal.signal(signal.SIGINT, previous)
            run_lock.release()

    def _done(self) -> bool:
        return self.epoch >= self.config.epochs or self.counter >= self.config.patience

    def _request_stop(self, signum, frame) -> None:
        """Ctrl-C: finish the current step, write a checkpoint, stop. A second Ctrl-C stops at once."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _train_epoch(self, bar) -> None:
        """The rest of an epoch in its seeded order (from batch ``self.batch``), then its scores, the best weights,
        the metrics record and a checkpoint; a Ctrl-C saves the position within the epoch instead."""
        config, train = self.config, self.splits["train"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed * 1_000_003
                                                                                   + self.epoch))
        for batch in batches(train, config.batch_size, order[self.batch * config.batch_size:]):
            loss = self._train_step(batch.to(self.device))
            self.batch, self.loss_sum = self.batch + 1, self.loss_sum + loss
            bar.update()
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", refresh=False)
            if self.stop_requested:
                self._save()
                return
        self._end_epoch(bar)

    def _end_epoch(self, bar) -> None:
        config = self.config
        self.epoch, loss, self.batch, self.loss_sum = self.epoch + 1, self.loss_sum / self.per_epoch, 0, 0.0
        scores = {split: test_scores(self.model, self.task, self.splits[split], config.batch_size, self.device)
                  for split in ("val", "test")}
        checkpoint.check_scores(scores, f"epoch {self.epoch} (step {self.step})", self.run_dir)
        headline = self.task.headline
        measure = scores["val"][headline] * (1 if self.task.higher_is_better else -1)
        if self.best is None or measure >= self.best["score"]:  # a tie counts as better
            self.best, self.counter = dict(score=measure, epoch=self.epoch, step=self.step), 0
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.counter += 1
        record = dict(epoch=self.epoch, step=self.step, lr=self.schedule.get_last_lr()[0], loss=loss,
                      **{f"{split}_{name}": v for split, values in scores.items() for name, v in values.items()},
                      best_epoch=self.best["epoch"])
        metrics.append(self.run_dir / metrics.METRICS, record)
        early = (f"; no better validation {headline} for {self.counter} epochs: stopping early"
                 if self.counter >= config.patience else "")
        bar.write(f"epoch {self.epoch} (step {self.step}): loss {loss:.4g}, val {headline} "
                  f"{scores['val'][headline]:.4g}, test {headline} {scores['test'][headline]:.4g}; best epoch "
                  f"{self.best['epoch']}{early}")
        self._save()

    def _train_step(self, batch) -> float:
        """One AdamW step; its loss. The loss and gradient norm are checked before ``optimizer.step()``: a NaN or
        infinite update never reaches the weights."""
        loss = self.task.loss(*self.task.select(self.model(batch), batch))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip).item()
        value = loss.item()
        checkpoint.check_update(value, grad_norm, f"step {self.step + 1} (epoch {self.epoch + 1})", self.run_dir)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return value

    # ---------------------------------------------------------------- files
    def _start_run_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(dataclasses.asdict(self.config), sort_keys=False))
        if self.config.resume is not None:
            metrics.restart(self.source.parent / metrics.METRICS, self.run_dir / metrics.METRICS, self.step)
        sizes = " / ".join(str(len(self.splits[s])) for s in ("train", "val", "test"))
        print(f"{self.config.model} ({count_parameters(self.model)} parameters), {self.config.task} (train / val / "
              f"test graphs: {sizes}), {self.device.type}; run folder {self.run_dir}", flush=True)

    def _save(self) -> Path:
        """A checkpoint of the current step: ``config.json``, the best weights so far (the current ones before the
        first validation), the trainer state. NaN or infinite weights are never written: :class:`NonFiniteError`."""
        weights = checkpoint.finite_weights(self.model, self.step, self.run_dir)
        state = dict(config=dataclasses.asdict(self.config), epoch=self.epoch, batch=self.batch, step=self.step,
                     loss_sum=self.loss_sum, best=self.best, counter=self.counter, weights=weights,
                     optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
                     rng=resume.rng_state())
        path = checkpoint.save_run(self.run_dir, self.step, dict(model=self.model.config, task=self.task.to_dict()),
                                   self.best_weights or weights, state, self.config.keep_checkpoints)
        metrics.plot(metrics.read(self.run_dir / metrics.METRICS), self.run_dir / metrics.PLOT,
                     f"{self.config.model}: {self.config.task}",
                     "cross-entropy" if self.task.kind == "classify" else "MSE (standardised)")
        return path

    def _finish(self) -> dict:
        """The best model on the test split: ``results.json`` and a table."""
        self.model.load_state_dict(self.best_weights)
        scores = test_scores(self.model, self.task, self.splits["test"], self.config.batch_size, self.device)
        checkpoint.check_scores({"test": scores}, "the best model")
        results = dict(scores, headline=self.task.headline, model=self.config.model, task=self.config.task,
                       parameters=count_parameters(self.model), graphs=len(self.splits["test"]),
                       best_epoch=self.best["epoch"], epochs=self.epoch, steps=self.step)
        (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"Test results of {self.run_dir} (best epoch {results['best_epoch']})\n" + table(results), flush=True)
        return results


# ---------------------------------------------------------------------------------------------------------------
# evaluation of a saved run
# ---------------------------------------------------------------------------------------------------------------

def load_run(path: str | Path, device="cpu"):
    """``(model, task, settings, checkpoint folder)`` of a run folder or checkpoint: the best model in eval mode on
    ``device``, its :class:`GraphTask` and the run's :class:`GraphTrainConfig`. A missing, truncated or foreign
    checkpoint raises :class:`CheckpointError`."""
    folder = checkpoint.resolve(path)
    weights, state = checkpoint.load(folder)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or "tokenization" not in saved:
        raise CheckpointError(f"{folder} is not a checkpoint of a graph run")
    try:
        described = json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8"))
        model, task = build_model(**described["model"]), GraphTask(**described["task"])
        model.load_state_dict(weights)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"cannot load the model of {folder}: {' '.join(str(error).split())}") from None
    names = {f.name for f in dataclasses.fields(GraphTrainConfig)}
    settings = GraphTrainConfig(**{k: v for k, v in saved.items()
                                   if k in names and k not in ("out", "device", "resume")})
    return model.to(device).eval(), task, settings, folder


def evaluate(run: str | Path, config: GraphEvalConfig) -> dict:
    """Test the best model of ``run`` on the run's test split (regenerated from its settings); print the table and
    write ``eval.md`` / ``eval.json`` to ``config.out`` or the run folder. Returns the results."""
    torch.set_flush_denormal(True)
    device = torch.device(config.device or "cpu")
    model, task, settings, folder = load_run(run, device)
    test = load_data(settings)[1]["test"]
    scores = test_scores(model, task, test, config.batch_size or settings.batch_size, device)
    checkpoint.check_scores({"test": scores}, f"the model of {folder}")
    results = dict(scores, headline=task.headline, model=settings.model, task=settings.task,
                   parameters=count_parameters(model), graphs=len(test), checkpoint=str(folder))
    out = Path(config.out or (folder.parent if checkpoint.checkpoints(folder.parent) else folder))
    title = f"Evaluation of {folder} (test split)"
    markdown, data = write_report(out / "eval.md", title=title, header=HEADER, rows=rows(results), data=results)
    print(f"{title}\n{table(results)}\nwritten to {markdown} and {data}")
    return results


HEADER = ["metric", "value"]


def rows(results: dict) -> list[list]:
    return [[name, f"{value:.4f}" if isinstance(value, float) else value] for name, value in results.items()]


def table(results: dict) -> str:
    """``results`` as a two-column Markdown table."""
    return markdown_table(HEADER, rows(results))


__all__ = ["GraphTrainConfig", "GraphEvalConfig", "train", "evaluate", "load_run", "load_data"]
