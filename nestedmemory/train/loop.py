"""The training run: ``train(TrainConfig)`` builds the data, model and optimizer (or restores them from a
checkpoint), trains with a progress bar, writes metrics, checkpoints and the loss curve, then evaluates and
samples. A NaN or infinite step stops the run (or is skipped, on request) before it reaches the weights; one run
at a time trains in a run folder (:mod:`.lock`). The same code runs as one process or under ``torchrun`` (see
:mod:`.distributed`)."""

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
from . import checkpoint, distributed, inference, lock, metrics, resume, stages
from .config import RESUMABLE_FIELDS, TrainConfig, model_config
from .errors import NonFiniteError, UserError
from .evaluate import loss_sums, summary, unigram_loss
from .optim import build_optimizer, build_scheduler

CONFIG_FILE = "config.yaml"
SAMPLE_FILE = "sample.txt"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def train(config: TrainConfig) -> dict:
    """Run ``config``; returns the summary (``run_dir``, ``step``, ``val_loss``, ``unigram_loss``, ``sample``,
    ``interrupted``, ``skipped``). Problems with the inputs raise :class:`UserError` before anything is written; a
    NaN or infinite loss, gradient norm or validation loss raises :class:`NonFiniteError` after saving the last
    finite state (see :meth:`Trainer._skip_nonfinite`)."""
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
        if resumed:  # the architecture forms the checkpoint was trained with (earlier runs: the earlier forms)
            self.model_config = checkpoint.trained_forms(self.source, self.model_config)
        self.run_dir = self._run_dir(resumed)
        self.lock = lock.RunLock(self.run_dir)  # taken by the main process only, in run()

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
        self.step, self.saved_step, self.accumulated, self.skipped = 0, None, [0.0, 0], 0
        if resumed:
            self._restore(resumed["state"])
        self.autocast = lambda: torch.autocast(processes.device.type, dtype=torch.bfloat16,
                                               enabled=config.precision == "bf16")
        self.stop_requested = False

    # ---------------------------------------------------------------- setup
    def _resumed_state(self) -> dict | None:
        if self.config.resume is None:
            return None
        self.source, weights, state = resume.load_resumed(self.config.resume, self.config, RESUMABLE_FIELDS)
        return dict(weights=weights, state=state)

    def _run_dir(self, resumed: dict | None) -> Path:
        """The run folder (:func:`~nestedmemory.train.resume.run_folder`), its lock checked on the main process."""
        stamp = self.processes.broadcast(time.strftime("%Y%m%d-%H%M%S"))
        return resume.run_folder(self.source if resumed else None, self.config.out,
                                 f"runs/{self.config.model.preset}-{self.config.model.size}-{stamp}",
                                 "nestedmemory train", lambda folder: self._on_main(lambda: lock.ensure_free(folder)))

    def _on_main(self, action) -> None:
        """``action()`` on the main process; a :class:`UserError` it raises is raised on every process (none is
        left waiting for the others)."""
        problem = None
        if self.processes.main:
            try:
                action()
            except UserError as error:
                problem = str(error)
        problem = self.processes.broadcast(problem)
        if problem:
            raise UserError(problem)

    def _restore(self, state: dict) -> None:
        """The optimizer, schedule, RNG, step and counters of a checkpoint. A parameter that has had no gradient
        yet (TNT's global-memory gates while ``seq_len`` ≤ its chunk) has no optimizer state, saved or not, as in
        the uninterrupted run: ``strict=False`` lets it stay so."""
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        self.scheduler.load_state_dict(state["scheduler"])
        resume.restore_rng(state["rng"])
        self.step = state["step"]
        self.saved_step = self.step if self.run_dir == self.source.parent else None
        self.accumulated = state["log_accumulator"]
        self.skipped = state.get("skipped", 0)  # checkpoints from before skip_nonfinite have none

    # ---------------------------------------------------------------- loop
    def run(self) -> dict:
        """Train in the run folder, holding its lock (released however the run ends), then evaluate and sample
        unless interrupted."""
        self._on_main(self.lock.acquire)
        try:
            final = self._train()
            if self.step < self.config.max_steps:
                if self.processes.main:
                    print(f"interrupted at step {self.step}; resume with: nestedmemory train --resume {self.run_dir}")
                return dict(run_dir=str(self.run_dir), step=self.step, interrupted=True, skipped=self.skipped)
            return self._finish(final)
        finally:
            self.lock.release()

    def _train(self) -> Path:
        """The training steps up to ``max_steps`` or a Ctrl-C; the checkpoint of the step reached. A non-finite
        step or validation saves the last finite state, then raises."""
        config, processes, main = self.config, self.processes, self.processes.main
        if main:
            self._start_run_folder()
        start, tokens_per_step = self.step, config.batch_size * config.data.seq_len
        batches = self.data.training_batches(config.batch_size, config.seed, start=start)
        bar = tqdm(total=config.max_steps, initial=start, unit="step", dynamic_ncols=True,
                   disable=not (config.progress and main))
        previous = signal.signal(signal.SIGINT, self._request_stop)
        began, grad_norm = time.perf_counter(), None
        try:
            while self.step < config.max_steps and not processes.any(self.stop_requested):
                if self.stage2_at is not None and self.step >= self.stage2_at and not self.in_stage2:
                    self._enter_stage2()
                applied = self._train_step(self._next(batches))
                self.step += 1
                if applied is not None:
                    loss, grad_norm = applied
                    self.accumulated = [self.accumulated[0] + loss, self.accumulated[1] + 1]
                bar.update()
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    rate = (self.step - start) * tokens_per_step / (time.perf_counter() - began)
                    self._log_training(bar, grad_norm, rate)
                if config.eval_every and self.step % config.eval_every == 0 and self.step < config.max_steps:
                    self._evaluate()
                if config.save_every and self.step % config.save_every == 0:
                    self._save()
        except NonFiniteError:
            self._save()  # the last finite state (the failed step was not applied), to resume from
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
        return self._save()

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

    def _train_step(self, batch: torch.Tensor) -> tuple[float, float] | None:
        """One optimizer step on a global batch: the loss (mean over every process's rows) and gradient norm, or
        ``None`` for a step :meth:`_skip_nonfinite` skips. Both values are checked before ``optimizer.step()``, so
        a NaN or infinite update never reaches the weights."""
        local = self.processes.shard(batch)
        with self.autocast():
            loss = self.wrapped(input_ids=local, labels=local).loss
        loss.backward()
        clip = self.config.optim.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        mean_loss = (self.processes.sum(loss.detach().float()) / self.processes.world).item()
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
        finite = math.isfinite(mean_loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        else:
            self._skip_nonfinite(mean_loss, grad_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (mean_loss, grad_norm) if finite else None

    def _skip_nonfinite(self, loss: float, grad_norm: float) -> None:
        """A step whose loss or gradient norm is NaN or infinite: skipped (no update; its batch and the schedule
        move on, so a resume stays exact) while fewer than ``skip_nonfinite`` were, else :class:`NonFiniteError`.
        The loss is summed over the processes and the gradients are reduced before their norm, so every process
        takes the same decision."""
        if self.skipped < self.config.skip_nonfinite:
            self.skipped += 1
            return
        bad = " and ".join(f"the {name} is {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
                           if not math.isfinite(value))
        skipped = f" ({self.skipped} steps skipped already, the --skip_nonfinite limit)" if self.skipped else ""
        raise NonFiniteError(
            f"step {self.step + 1}: {bad}{skipped}; the update was not applied and {self.run_dir} is saved at step "
            f"{self.step}. {self._remedies()}, or skip such steps: nestedmemory train --resume {self.run_dir} "
            "--skip_nonfinite N")

    def _remedies(self) -> str:
        """What to try after a non-finite loss (in a new run: the learning rate, clipping and precision are part
        of what a run computes)."""
        fp32 = ", --precision fp32" if self.config.precision == "bf16" else ""
        return f"Try a lower --optim.lr or --optim.grad_clip{fp32} in a new run"

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

    def _log_training(self, bar, grad_norm: float | None, rate: float) -> None:
        """A training record: mean loss of the steps applied since the last one (none when every step was
        skipped), last gradient norm, learning rate, tokens, speed and the count of skipped steps."""
        total, count = self.accumulated
        self.accumulated = [0.0, 0]
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{total / count:.3f}" if count else "-", tok_s=f"{rate:.0f}", refresh=False)
        losses = dict(loss=total / count, lr=lr, grad_norm=grad_norm) if count else dict(lr=lr)
        self._record(**losses, tokens=self.step * self.config.batch_size * self.config.data.seq_len,
                     tokens_per_s=rate, skipped=self.skipped)

    def _evaluate(self) -> dict:
        """Validation loss and perplexity, recorded; a non-finite one raises :class:`NonFiniteError`."""
        totals = loss_sums(self.wrapped, self.validation, self.processes.shard, self.autocast)
        try:
            result = summary(self.processes.sum(totals))
        except NonFiniteError as error:
            raise NonFiniteError(f"step {self.step}: validation: {error}; {self.run_dir} is saved at step "
                                 f"{self.step}. {self._remedies()}") from None
        self._record(val_loss=result["loss"], val_perplexity=result["perplexity"])
        return result

    def _plot(self) -> None:
        metrics.plot(metrics.read(self.run_dir / metrics.METRICS), self.run_dir / metrics.PLOT,
                     f"{self.config.model.preset} ({self.config.model.size})")

    def _save(self) -> Path:
        """A checkpoint of the current step (every process takes part in gathering the state; the main one
        writes it). Weights that are NaN or infinite are never written: :class:`NonFiniteError`."""
        path = self.run_dir / checkpoint.checkpoint_name(self.step)
        if self.saved_step == self.step:
            return path
        model_state = get_model_state_dict(self.model, options=FULL)  # empty except on the main process
        if self.processes.any(not all(torch.isfinite(t).all() for t in model_state.values())):
            raise NonFiniteError(f"step {self.step}: the weights are NaN or infinite, no checkpoint was written "
                                 f"(the newest of {self.run_dir} is the last finite state). {self._remedies()}")
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=FULL)
        if self.processes.main:
            state = dict(step=self.step, config=dataclasses.asdict(self.config), optimizer=optimizer_state,
                         scheduler=self.scheduler.state_dict(), log_accumulator=self.accumulated, skipped=self.skipped,
                         data=dict(batches=self.step), rng=resume.rng_state())
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
                   val_perplexity=result["perplexity"], interrupted=False, skipped=self.skipped)
        if self.processes.main:
            out["unigram_loss"] = unigram_loss(self.data.validation_tokens())
            self._plot()
            model, tokenizer, _ = inference.load(final, self.processes.device)
            out["sample"] = inference.sample(model, tokenizer, self.config.sample)
            (self.run_dir / SAMPLE_FILE).write_text(self.config.sample.prompt + out["sample"], encoding="utf-8")
            skipped = f"; {self.skipped} non-finite steps skipped" if self.skipped else ""
            print(f"validation loss {out['val_loss']:.4f} nats/token (perplexity {out['val_perplexity']:.2f}); "
                  f"unigram baseline {out['unigram_loss']:.4f}{skipped}\n--- sample ---\n"
                  f"{self.config.sample.prompt}{out['sample']}\n--- run folder: {self.run_dir}", flush=True)
        self.processes.barrier()
        return out
