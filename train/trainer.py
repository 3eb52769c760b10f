"""The accelerate training run: SUPIR's adaptor (trunk + connectors) on frozen SDXL, or (``stage: encoder``)
the degradation-robust encoder. What is trained and how a batch becomes a loss is the objective's
(``train.objectives``); this module owns the run around it: setup, resume, steps, logging, validation,
checkpoints and exports.

Determinism: the data of micro-batch ``m`` on rank ``r`` is a function of (seed, r, m) (``train.data``), and so
is every random draw of the step (a generator seeded with ``seed_for(seed, NOISE_STREAM, r, m)``). Model,
optimizer, scheduler and EMA states come back from the checkpoint, so a run resumed at step ``s`` computes
exactly what the uninterrupted run computed from step ``s`` on.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from supirkit.datapipe import faults
from supirkit.model.runtime import apply_runtime_options
from supirkit.train.checkpoint import (
    export_folder,
    keep_only,
    missing_trained_weights,
    read_state,
    resolve_resume,
    save_checkpoint,
    training_hash,
)
from supirkit.train.config import TrainConfig
from supirkit.train.ema import EMAModel
from supirkit.train.objectives import build_objective
from supirkit.train.seeds import NOISE_STREAM, seed_for
from supirkit.train.setup import SetupError, build_optimizer, build_scheduler, check_logging, check_optimizer
from supirkit.train.tracking import RunLog, StepWindow, flat_config, param_digest

log = logging.getLogger("supirkit.train")


@dataclass
class RunResult:
    step: int
    output_dir: Path
    export: Optional[Path]
    stopped_early: bool


def _accelerator(cfg: TrainConfig, out: Path):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    sch, backend = cfg.schedule, cfg.logging.backend
    return Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=sch.mixed_precision,
        gradient_accumulation_steps=sch.grad_accum, log_with=None if backend == "none" else backend,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False)  # the LR schedule counts optimizer steps, not steps x processes


class Trainer:
    """One process's part of a run: ``Trainer(cfg).run(resume, stop_at_step)`` in every process."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.step = 0
        self.start_step = 0
        self.validator = None
        self.exported: Optional[Path] = None

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Accelerator, objective (frozen SDXL + the trained module), optimizer, schedule, EMA, data."""
        import torch
        from accelerate.utils import DistributedType

        cfg, sch = self.cfg, self.cfg.schedule
        acc = self.accelerator = _accelerator(cfg, self.out)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[sch.mixed_precision]
        if self.device.type == "cuda" and sch.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        on_cuda = self.device.type == "cuda"
        check_optimizer(cfg, on_cuda)
        check_logging(cfg)
        torch.manual_seed(seed_for(sch.seed, 0))  # new weights (connectors) start equal on every rank
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.fsdp and cfg.optim.ema.enabled:
            raise SetupError("optim.ema with FSDP is not supported (sharded parameters); disable EMA or use DDP/ZeRO-2")
        self.objective = build_objective(cfg, self.device, dtype)
        apply_runtime_options(cfg.runtime, self.objective.module(), self.objective.frozen.vae, self.device)
        plain = self.objective.module()
        params = self.objective.trainable(plain)
        optimizer = build_optimizer(cfg, params, on_cuda)
        self.ema = None
        if cfg.optim.ema.enabled:
            e = cfg.optim.ema
            self.ema = EMAModel(params, e.decay, e.update_every, e.start_step, e.warmup)
            acc.register_for_checkpointing(self.ema)
        self.module, self.optimizer, self.lr_scheduler = acc.prepare(plain, optimizer, build_scheduler(cfg, optimizer))
        if acc.gradient_accumulation_steps != sch.grad_accum:
            raise SetupError(f"the launcher's gradient accumulation ({acc.gradient_accumulation_steps}) differs from "
                             f"schedule.grad_accum ({sch.grad_accum}): make them equal (DeepSpeed config)")
        self.unwrapped = acc.unwrap_model(self.module)
        self.params = self.objective.trainable(self.unwrapped)
        self.partial = self.objective.checkpoint_prefix is not None and acc.distributed_type in (
            DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        if self.partial:
            acc.register_save_state_pre_hook(keep_only(self.objective.checkpoint_prefix))
        self.run_hash = training_hash(cfg)

    def resume(self, spec: Optional[str]) -> None:
        """Load the checkpoint ``spec`` names (``latest``, a folder, a step name); start at step 0 without one."""
        ckpt = resolve_resume(self.out, spec)
        if ckpt is None:
            if spec:
                log.info("no checkpoint under %s yet: starting at step 0", self.out)
            return
        state = read_state(ckpt)
        if state.get("training_hash") not in (None, self.run_hash):
            log.warning("resuming %s with a changed model/data/optim/schedule config (%s -> %s)", ckpt,
                        state.get("training_hash"), self.run_hash)
        if self.partial:
            prefix = self.objective.checkpoint_prefix
            missing = missing_trained_weights(ckpt, [n for n, _ in self.objective.named_trainable(self.unwrapped)],
                                              prefix)
            if missing:
                raise SetupError(f"checkpoint {ckpt} lacks {len(missing)} trained weights (e.g. {missing[0]}): "
                                 "it was written for a different model config")
            self.accelerator.load_state(str(ckpt), strict=False)
        else:
            self.accelerator.load_state(str(ckpt))
        self.start_step = self.step = int(state["step"])
        if int(state.get("world_size", self.world)) != self.world:
            # sample i of rank r is drawn from rank r's shards: other ranks, other samples from here on
            log.warning("checkpoint %s was written by %s processes, this run has %d: training continues, but not "
                        "on the samples the original run would have drawn", ckpt, state.get("world_size"), self.world)
        log.info("resumed from %s at step %d", ckpt, self.start_step)

    def _data(self) -> None:
        from supirkit.train.data import build_loader, build_stream

        cfg, sch = self.cfg, self.cfg.schedule
        self.stream = build_stream(cfg.data, seed=sch.seed, rank=self.rank, world=self.world,
                                   batch_size=sch.batch_size, start_micro_batch=self.start_step * sch.grad_accum)
        loader = build_loader(self.stream, cfg.data.num_workers, cfg.data.prefetch_factor,
                              pin_memory=self.device.type == "cuda")
        self.batches = iter(loader)
        if self.accelerator.is_main_process:
            s = self.stream
            log.info(
                "stage %s: %d trainable parameters, %d process(es), batch %d x accum %d x %d = %d per step; "
                "mixture %s (%d rows); steps %d..%d",
                cfg.stage,
                sum(p.numel() for p in self.params),
                self.world,
                sch.batch_size,
                sch.grad_accum,
                self.world,
                sch.batch_size * sch.grad_accum * self.world,
                ", ".join(f"{n} {p:.3f}" for n, p in zip(s.member_names(), s.probs)),
                s.total_rows,
                self.start_step,
                sch.max_steps,
            )

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self, window: StepWindow) -> dict:
        """One optimizer step (``grad_accum`` micro-batches); returns what the trace records."""
        import torch

        sch, acc = self.cfg.schedule, self.accelerator
        keys, members, losses = [], [], []
        for a in range(sch.grad_accum):
            m = self.step * sch.grad_accum + a
            t0 = time.perf_counter()
            batch = next(self.batches)
            window.wait += time.perf_counter() - t0
            if batch["micro_batch"] != m:  # the loader must deliver micro-batches in order
                raise RuntimeError(f"data stream out of order: expected micro-batch {m}, got {batch['micro_batch']}")
            generator = torch.Generator().manual_seed(seed_for(sch.seed, NOISE_STREAM, self.rank, m))
            with acc.accumulate(self.module):
                loss = self.objective.loss(self.module, self.unwrapped, batch, generator, acc.autocast)
                acc.backward(loss)
                if acc.sync_gradients:
                    self.grad_norm = acc.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm or math.inf)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            keys.extend(batch["key"])
            members.extend(batch["member"].tolist())
        self.lr_scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.step(self.step)
        step_loss = torch.stack(losses).mean()
        window.losses.append(step_loss)
        window.steps += 1
        return {"step": self.step, "keys": keys, "members": members, "loss": float(step_loss)}

    def log_metrics(self, window: StepWindow) -> None:
        import torch

        sch = self.cfg.schedule
        elapsed = time.perf_counter() - window.t0
        mean_loss = self.accelerator.reduce(torch.stack(window.losses).mean(), reduction="mean")
        values = {
            "train/loss": float(mean_loss),
            "train/lr": float(self.lr_scheduler.get_last_lr()[0]),
            "train/samples_per_s": window.steps * sch.batch_size * sch.grad_accum * self.world / max(elapsed, 1e-9),
            "train/data_wait_s": window.wait / window.steps,
            "train/data_wait_frac": window.wait / max(elapsed, 1e-9),
            "train/epoch": self.stream.epoch_of(self.step * sch.grad_accum * sch.batch_size),
        }
        if self.grad_norm is not None:
            values["train/grad_norm"] = float(self.grad_norm)
        self.runlog.metrics(values, self.step)
        if self.accelerator.is_main_process:
            log.info("step %d/%d loss %.4f lr %.3g grad %.3g %.1f samples/s data wait %.0f%%", self.step,
                     sch.max_steps, values["train/loss"], values["train/lr"], values.get("train/grad_norm", 0.0),
                     values["train/samples_per_s"], 100 * values["train/data_wait_frac"])

    # ------------------------------------------------------------------------------------ side tasks
    def validate(self) -> None:
        """Validation on the main process (EMA weights when there is an EMA); every process waits for it."""
        if self.fsdp:  # the main process holds a shard of the model only; restore the exported adaptor instead
            if self.validator is None:
                log.warning("validation is skipped under FSDP: run `supirkit restore` on an exported adaptor")
                self.validator = False
            return
        acc = self.accelerator
        if acc.is_main_process:
            from supirkit.train.validate import Validator, run_validation

            if self.validator is None:
                self.validator = Validator(self.cfg, self.device, self.out, self.stream.indexes)
            with self.ema.applied() if self.ema is not None else nullcontext():
                values, grid = run_validation(self.validator, self.cfg, self.objective, self.module,
                                              self.unwrapped, acc.autocast, self.step)
            if grid is not None:
                self.runlog.image("val/restored", grid, self.step)
            if values:
                self.runlog.metrics(values, self.step)
                log.info("validation at step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        acc.wait_for_everyone()

    def checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.out, self.step,
                        {"training_hash": self.run_hash, "stage": self.cfg.stage, "world_size": self.world,
                         "micro_batches": self.step * self.cfg.schedule.grad_accum},
                        self.cfg.checkpoint.keep_last)

    def export(self) -> Optional[Path]:
        """The restore-ready folder of the current weights (EMA weights when configured); every process
        takes part in gathering the state dict."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        use_ema = self.ema is not None and self.cfg.checkpoint.export_ema
        with self.ema.applied() if use_ema else nullcontext():
            state = acc.get_state_dict(self.module)  # a gather under FSDP
        if acc.is_main_process:
            path = export_folder(self.out, self.step, lambda d: self.objective.save(self.unwrapped, state, d),
                                 {"stage": self.cfg.stage, "ema": use_ema, "pretrained": self.cfg.model.pretrained})
            log.info("exported %s", path)
        acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------------------------------ run
    def _after_step(self, record: dict, trace, window: StepWindow, stop: int) -> StepWindow:
        cfg, step, max_steps = self.cfg, self.step, self.cfg.schedule.max_steps
        if trace is not None:
            trace.write(json.dumps({**record, "params": param_digest(self.params)}) + "\n")
            trace.flush()
        if step % cfg.logging.every_steps == 0 or step == stop:
            self.log_metrics(window)
            window = StepWindow()
        if step % cfg.checkpoint.every_steps == 0:
            self.checkpoint()
            self.last_saved = step
        if cfg.checkpoint.export_every_steps and step % cfg.checkpoint.export_every_steps == 0 and step < max_steps:
            self.exported = self.export()
        if cfg.validation.every_steps and step % cfg.validation.every_steps == 0 and step < max_steps:
            self.validate()
        faults.maybe_fail("train_step", step)
        return window

    def run(self, resume: Optional[str] = None, stop_at_step: Optional[int] = None) -> RunResult:
        cfg, sch = self.cfg, self.cfg.schedule
        self.setup()
        self.resume(resume)
        backend = cfg.logging.backend
        if backend != "none":
            self.accelerator.init_trackers(cfg.logging.project, config=flat_config(cfg))
        self.runlog = RunLog(self.accelerator, self.out, backend)
        self._data()
        trace = None
        if cfg.logging.trace:
            (self.out / "trace").mkdir(parents=True, exist_ok=True)
            trace = open(self.out / "trace" / f"rank-{self.rank}.jsonl", "a", encoding="utf-8")
        if self.step == 0 and cfg.validation.every_steps and cfg.validation.at_start:
            self.validate()
        self.grad_norm, self.last_saved = None, -1
        stop = min(stop_at_step if stop_at_step is not None else sch.max_steps, sch.max_steps)
        window = StepWindow()
        self.module.train()
        while self.step < stop:
            record = self.train_step(window)
            window = self._after_step(record, trace, window, stop)
        if self.last_saved != self.step and self.step > self.start_step:
            self.checkpoint()
        finished = self.step >= sch.max_steps
        if finished and self.step > self.start_step:
            self.exported = self.export()
            if cfg.validation.every_steps:
                self.validate()
        if trace is not None:
            trace.close()
        self.accelerator.wait_for_everyone()
        if backend != "none":
            self.accelerator.end_training()
        return RunResult(step=self.step, output_dir=self.out, export=self.exported, stopped_early=not finished)


def train(cfg: TrainConfig, resume: Optional[str] = None, stop_at_step: Optional[int] = None) -> RunResult:
    """Run (or continue) the training described by ``cfg``. Call it in every process of the launch."""
    return Trainer(cfg).run(resume, stop_at_step)


__all__ = ["Trainer", "RunResult", "train"]
