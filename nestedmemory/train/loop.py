"""The training run: ``train(TrainConfig)`` builds the data, model and optimizer (or restores them from a
checkpoint), trains with a progress bar, writes metrics, checkpoints and the loss curve, then evaluates and
samples. The same code runs as one process or under ``torchrun`` (see :mod:`.distributed`)."""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path

import torch
import yaml
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from ..data import TextData, load_tokenizer
from ..models import NestedMemoryForCausalLM
from . import checkpoint, distributed, inference, metrics, stages
from .config import TrainConfig, incompatible, model_config
from .errors import CheckpointError, UserError
from .evaluate import loss_sums, summary, unigram_loss
from .optim import build_optimizer, build_scheduler

CONFIG_FILE = "config.yaml"
SAMPLE_FILE = "sample.txt"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def train(config: TrainConfig) -> dict:
    """Run ``config``; returns the summary (``run_dir``, ``step``, ``val_loss``, ``unigram_loss``, ``sample``,
    ``interrupted``). Problems with the inputs raise :class:`UserError` before anything is written."""
    torch.set_flush_denormal(True)  # not runtime.configure_cpu: its mmap threshold costs +75% CPU time here
    processes = distributed.setup(config.device)
    try:
        return Trainer(config, processes).run()
    finally:
        distributed.teardown()


class Trainer:
    def __init__(self, config: TrainConfig, processes: distributed.Processes):
        self.config, self.processes = config, processes
        if config.batch_size % processes.world:
            raise UserError(f"batch_size {config.batch_size} is not divisible by the {processes.world} processes")
        try:
            self.tokenizer = load_tokenizer(config.data.tokenizer)
            self.data = TextData(config.data.path, self.tokenizer, config.data.seq_len, config.data.val_tokens,
                                 config.data.text_field, config.data.separator, config.data.shuffle_buffer)
            self.validation = self.data.validation_batches(config.batch_size)
        except (OSError, ValueError) as error:
            raise UserError(str(error)) from error
        if not self.validation:
            raise UserError(f"data.val_tokens={config.data.val_tokens} holds no validation batch of batch_size × "
                            f"seq_len = {config.batch_size * config.data.seq_len} tokens")
        self.model_config = model_config(config.model, self.tokenizer.vocab_size)
        resumed = self._resumed_state()
        self.run_dir = self._run_dir(resumed)

        torch.manual_seed(config.seed)
        self.model = NestedMemoryForCausalLM(self.model_config)
        if resumed:
            self.model.load_state_dict(resumed["weights"])
        self.stage2_at, self.in_stage2 = stages.stage2_start(config, self.model), False
        self.model.to(processes.device)
        if config.compile:
            self.model.compile()
        self.wrapped = distributed.wrap(self.model, processes, config.parallel)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.max_steps)
        self.step, self.saved_step, self.accumulated = 0, None, [0.0, 0]
        if resumed:
            self._restore(resumed["state"])
        self.autocast = lambda: torch.autocast(processes.device.type, dtype=torch.bfloat16,
                                               enabled=config.precision == "bf16")
        self.stop_requested = False

    # ---------------------------------------------------------------- setup
    def _resumed_state(self) -> dict | None:
        if self.config.resume is None:
            return None
        self.source = checkpoint.resolve(self.config.resume)
        weights, state = checkpoint.load(self.source)
        problems = incompatible(state["config"], self.config)
        if problems:
            raise CheckpointError(f"incompatible config on resume from {self.source}: " + "; ".join(problems))
        return dict(weights=weights, state=state)

    def _run_dir(self, resumed: dict | None) -> Path:
        """The run folder, checked before anything is written: a new (or empty) folder, or the folder of the
        checkpoint resumed if it is its newest."""
        config = self.config
        if resumed and (config.out is None or Path(config.out).resolve() == self.source.parent.resolve()):
            if checkpoint.checkpoints(self.source.parent)[-1] != self.source:
                raise UserError(f"{self.source} is not the newest checkpoint of {self.source.parent}; "
                                "pass --out NEW_FOLDER to branch a new run from it")
            return self.source.parent
        stamp = self.processes.broadcast(time.strftime("%Y%m%d-%H%M%S"))
        run_dir = Path(config.out or f"runs/{config.model.preset}-{config.model.size}-{stamp}")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run folder {run_dir} already exists; continue it with --resume {run_dir} or choose "
                            "another --out")
        return run_dir

    def _restore(self, state: dict) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = state["step"]
        self.saved_step = self.step if self.run_dir == self.source.parent else None
        self.accumulated = state["log_accumulator"]

    # ---------------------------------------------------------------- loop
    def run(self) -> dict:
        config, processes, main = self.config, self.processes, self.processes.main
        if main:
            self._start_run_folder()
        start, tokens_per_step = self.step, config.batch_size * config.data.seq_len
        batches = self.data.training_batches(config.batch_size, config.seed, start=start)
        bar = tqdm(total=config.max_steps, initial=start, unit="step", dynamic_ncols=True,
                   disable=not (config.progress and main))
        previous = signal.signal(signal.SIGINT, self._request_stop)
        began = time.perf_counter()
        try:
            while self.step < config.max_steps and not processes.any(self.stop_requested):
                if self.stage2_at is not None and self.step >= self.stage2_at and not self.in_stage2:
                    self._enter_stage2()
                loss, grad_norm = self._train_step(self._next(batches))
                self.step += 1
                self.accumulated = [self.accumulated[0] + loss, self.accumulated[1] + 1]
                bar.update()
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    rate = (self.step - start) * tokens_per_step / (time.perf_counter() - began)
                    self._log_training(bar, grad_norm, rate)
                if config.eval_every and self.step % config.eval_every == 0 and self.step < config.max_steps:
                    self._evaluate()
                if config.save_every and self.step % config.save_every == 0:
                    self._save()
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
        final = self._save()
        if self.step < config.max_steps:
            if main:
                print(f"interrupted at step {self.step}; resume with: nestedmemory train --resume {self.run_dir}")
            return dict(run_dir=str(self.run_dir), step=self.step, interrupted=True)
        return self._finish(final)

    def _enter_stage2(self) -> None:
        stages.enter_stage2(self.model, self.config.tnt.local_chunk_sizes)
        self.in_stage2 = True
        self._record(stage=2, local_chunk_sizes=list(self.config.tnt.local_chunk_sizes))
        if self.processes.main:
            tqdm.write(f"step {self.step}: TNT stage 2, local chunk sizes {self.config.tnt.local_chunk_sizes}")

    def _request_stop(self, signum, frame) -> None:
        """Ctrl-C: finish the current step, write a checkpoint, stop. A second Ctrl-C stops at once."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @staticmethod
    def _next(batches) -> torch.Tensor:
        try:
            return next(batches)
        except (OSError, ValueError) as error:  # a bad record deep in the training data
            raise UserError(f"reading the training data: {error}") from error

    def _train_step(self, batch: torch.Tensor) -> tuple[float, float]:
        """One optimizer step on a global batch; the loss (mean over every process's rows) and gradient norm."""
        local = self.processes.shard(batch)
        with self.autocast():
            loss = self.wrapped(input_ids=local, labels=local).loss
        loss.backward()
        clip = self.config.optim.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self.processes.sum(loss.detach().float()) / self.processes.world
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return mean_loss.item(), grad_norm.item()

    # ---------------------------------------------------------------- reporting
    def _start_run_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(dataclasses.asdict(self.config), sort_keys=False))
        if self.config.resume is not None:
            metrics.restart(self.source.parent / metrics.METRICS, self.run_dir / metrics.METRICS, self.step)
        parameters = sum(p.numel() for p in self.model.parameters())
        print(f"{self.config.model.preset} ({self.config.model.size}, {parameters / 1e6:.2f}M parameters) on "
              f"{self.processes.world}× {self.processes.device.type}; run folder {self.run_dir}", flush=True)

    def _record(self, **record) -> None:
        if self.processes.main:
            metrics.append(self.run_dir / metrics.METRICS, dict(step=self.step, **record))

    def _log_training(self, bar, grad_norm: float, rate: float) -> None:
        loss = self.accumulated[0] / self.accumulated[1]
        self.accumulated = [0.0, 0]
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}", refresh=False)
        self._record(loss=loss, lr=lr, grad_norm=grad_norm, tokens=self.step * self.config.batch_size *
                     self.config.data.seq_len, tokens_per_s=rate)

    def _evaluate(self) -> dict:
        totals = loss_sums(self.wrapped, self.validation, self.processes.shard, self.autocast)
        result = summary(self.processes.sum(totals))
        self._record(val_loss=result["loss"], val_perplexity=result["perplexity"])
        return result

    def _plot(self) -> None:
        metrics.plot(metrics.read(self.run_dir / metrics.METRICS), self.run_dir / metrics.PLOT,
                     f"{self.config.model.preset} ({self.config.model.size})")

    def _save(self) -> Path:
        """A checkpoint of the current step (every process takes part in gathering the state; the main one
        writes it)."""
        path = self.run_dir / checkpoint.checkpoint_name(self.step)
        if self.saved_step == self.step:
            return path
        model_state = get_model_state_dict(self.model, options=FULL)
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=FULL)
        if self.processes.main:
            state = dict(step=self.step, config=dataclasses.asdict(self.config), optimizer=optimizer_state,
                         scheduler=self.scheduler.state_dict(), log_accumulator=self.accumulated,
                         data=dict(batches=self.step), rng=dict(cpu=torch.get_rng_state(), cuda=(
                             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])))
            checkpoint.save(self.run_dir, self.step, self.model_config, model_state, self.tokenizer, state,
                            self.config.keep_checkpoints)
            self._plot()
        self.processes.barrier()
        self.saved_step = self.step
        return path

    def _finish(self, final: Path) -> dict:
        """Validation loss against the unigram baseline, the loss curve, and a sample from the saved model."""
        result = self._evaluate()
        out = dict(run_dir=str(self.run_dir), step=self.step, val_loss=result["loss"],
                   val_perplexity=result["perplexity"], interrupted=False)
        if self.processes.main:
            out["unigram_loss"] = unigram_loss(self.data.validation_tokens())
            self._plot()
            model, tokenizer, _ = inference.load(final, self.processes.device)
            out["sample"] = inference.sample(model, tokenizer, self.config.sample)
            (self.run_dir / SAMPLE_FILE).write_text(self.config.sample.prompt + out["sample"], encoding="utf-8")
            print(f"validation loss {out['val_loss']:.4f} nats/token (perplexity {out['val_perplexity']:.2f}); "
                  f"unigram baseline {out['unigram_loss']:.4f}\n--- sample ---\n"
                  f"{self.config.sample.prompt}{out['sample']}\n--- run folder: {self.run_dir}", flush=True)
        self.processes.barrier()
        return out
