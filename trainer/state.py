"""What a checkpoint holds and how a resume restores it, as a part of the Trainer (`TrainingState`): the model's
parameters and buffers, their moving average (trainer/ema.py), optimizer, scheduler, AMP scaler, loop position,
monitor, history, data order, the data loader's own state (e.g. fitted statistics) and every process's RNG state
and running sums."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import BEST, FORMAT, LATEST, best_in_file, save_checkpoint, unreadable_value
from utils import distributed
from utils.errors import CheckpointError, TrainingError, reason
from utils.files import atomic_write
from utils.rng import get_rng_state, set_rng_state
from utils.run import RunPaths

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"  # in the run's log folder: one JSON line per epoch, rewritten from the checkpoint


def write_history(run: RunPaths, history: list[dict[str, float]]) -> None:
    """`history.jsonl` in the run's log folder: one JSON line per epoch, replaced atomically."""
    path = run.log / HISTORY
    try:
        atomic_write(path, "".join(json.dumps(row) + "\n" for row in history).encode())
    except OSError as e:
        raise TrainingError(f"Could not write '{path}': {e.strerror or e}. Training stopped; the checkpoints are "
                            "intact. Free disk space (or fix the folder's permissions) and continue with: "
                            f"python train.py --resume {run.models}") from None


def unreadable_callback_state(callbacks: list[Any], states: list[Any]) -> str | None:
    """What is wrong when a callback's state (of `states`, one per callback) holds something a checkpoint cannot."""
    for i, (callback, state) in enumerate(zip(callbacks, states)):
        problem = unreadable_value(state)
        if problem is not None:
            return (f"callbacks[{i}], {type(callback).__name__}: its state_dict() holds {problem}, which a checkpoint "
                    "cannot hold (they are read with torch.load(weights_only=True): tensors and plain Python values "
                    "only). Convert it in state_dict() (float(x), int(x), torch.tensor(x)).")
    return None


def unreadable_data_state(state: Any) -> str | None:
    """What is wrong when the data loader's state holds something a checkpoint cannot."""
    problem = unreadable_value(state)
    return None if problem is None else (
        f"The data loader's state_dict() holds {problem}, which a checkpoint cannot hold (they are read with "
        "torch.load(weights_only=True): tensors and plain Python values only). Convert it in state_dict().")


class TrainingState:
    """The checkpoint side of the Trainer: `state_dict`, `load_state_dict` and the saves during a run."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly: tensors and plain values only. The `on_save_checkpoint`
        event may add entries of its own."""
        state = {
            "format": FORMAT,
            "torch_version": str(torch.__version__),
            "config": self.config.data,
            "model": self.model.state_dict(),
            "ema": None,  # the EMA's, when there is one: its event on_save_checkpoint (trainer/ema.py)
            # With several optimizers (`optimizers`), these two hold their states by name.
            "optimizer": {name: o.state_dict() for name, o in self.optimizers.items()} if self.manual
            else self.optimizer.state_dict(),
            "lr_scheduler": {name: s.state_dict() for name, s in self.lr_schedulers.items()} if self.manual
            else self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "loop": {"epoch": self.epoch, "batch_idx": self.batch_idx, "global_step": self.global_step,
                     "epoch_trained": self.epoch_trained},
            "monitor": self.monitor.state_dict(),
            "history": self.history,
            "data": {**self.train_loader.sampler.state_dict(), "batch_size": self.train_loader.batch_size},
            "data_loader": self.data.state,
            "world_size": self.dist.world_size,
            # Each process's own random state and running sums, in rank order (one entry without DDP).
            "per_rank": distributed.gather({"rng": get_rng_state(), "tracker": self.tracker.state_dict()}),
            "callbacks": [{"type": type(c).__name__, "state": c.state_dict() if hasattr(c, "state_dict") else None}
                          for c in self.callbacks],
        }
        self.call("on_save_checkpoint", state)
        problem = unreadable_callback_state(self.callbacks, [entry["state"] for entry in state["callbacks"]])
        if problem is not None:
            raise TrainingError(f"{problem} Training stopped; nothing was written.")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            if self.manual:
                for name, optimizer in self.optimizers.items():
                    optimizer.load_state_dict(state["optimizer"][name])
                for name, scheduler in self.lr_schedulers.items():
                    scheduler.load_state_dict(state["lr_scheduler"][name])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
                if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
                    self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if self.scaler.is_enabled() and state["scaler"] is not None:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"The checkpoint does not fit the model or optimizer built from the config: "
                                  f"{reason(e)}. Resume with the checkpoint's own config (omit -c), "
                                  "or start a new run.") from None
        loop = state["loop"]
        self.epoch, self.batch_idx, self.global_step = loop["epoch"], loop["batch_idx"], loop["global_step"]
        self.epoch_trained = loop.get("epoch_trained", False)
        self.monitor.load_state_dict(state["monitor"])
        self.history = state.get("history", [])  # checkpoints written before history was kept have none
        ranks, world = state["per_rank"], state["world_size"]
        saved_batch = state["data"].get("batch_size", self.train_loader.batch_size)
        seed = self.train_loader.sampler.seed
        if state["data"]["seed"] != seed and (self.batch_idx or self.val_loader is not None):
            harm = ("pick another validation split, moving validation samples into training"
                    if self.val_loader is not None
                    else f"reorder the rest of epoch {self.epoch}, so samples would be seen twice or not at all")
            raise CheckpointError(f"The checkpoint was trained with seed {state['data']['seed']}; seed {seed} would "
                                  f"{harm}. Resume without changing the seed, or start a new run with -c.")
        if world == self.dist.world_size and saved_batch == self.train_loader.batch_size:
            self.tracker.load_state_dict(ranks[self.dist.rank]["tracker"])
        else:
            self._rederive_position(ranks, world, saved_batch)
        set_rng_state(ranks[min(self.dist.rank, len(ranks) - 1)]["rng"])
        self._load_callbacks(state.get("callbacks", []))
        self.call("on_load_checkpoint", state)

    def _load_callbacks(self, saved: list[dict[str, Any]]) -> None:
        """Each callback's saved state, matched by position and class; a callback the checkpoint lacks starts
        fresh, and the log says so."""
        for i, callback in enumerate(self.callbacks):
            name = type(callback).__name__
            entry = saved[i] if i < len(saved) and saved[i]["type"] == name else None
            if entry is None:
                log.warning("The checkpoint holds no state for callbacks[%d] (%s): it starts fresh.", i, name)
            elif entry["state"] is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(entry["state"])

    def _rederive_position(self, ranks: list[dict], world: int, saved_batch: int) -> None:
        """Resume with another number of processes or batch size: continue from the same global sample
        position (rounded down to a whole step), with the running sums on rank 0."""
        batch = self.train_loader.batch_size
        seen = self.batch_idx * saved_batch * world
        self.batch_idx = seen // (batch * self.dist.world_size)
        totals = [r["tracker"].get("totals", {}) for r in ranks]
        logged = [r["tracker"].get("logged", {}) for r in ranks]
        merged = {"sums": sum(r["tracker"]["sums"] for r in ranks), "count": sum(r["tracker"]["count"] for r in ranks),
                  "totals": {k: sum(t[k] for t in totals if k in t) for k in set().union(*totals)},
                  "logged": {k: sum(t[k] for t in logged if k in t) for k in set().union(*logged)}}
        if not self.dist.is_main:  # the same names with zero sums, so that every process reduces the same tensors
            merged = {"sums": torch.zeros_like(merged["sums"]), "count": 0,
                      **{part: {k: torch.zeros_like(v) for k, v in merged[part].items()} for part in ("totals", "logged")}}
        self.tracker.load_state_dict(merged)
        if seen:
            log.warning("The checkpoint was written by %d process(es) with batch size %d, this run has %d with %d: "
                        "the data order of epoch %d is re-derived from sample %d on (batch %d); random draws will "
                        "differ from an uninterrupted run.", world, saved_batch, self.dist.world_size, batch,
                        self.epoch, seen, self.batch_idx)

    def save(self, names: list[str]) -> Path:
        """Write the state to `names` in the run's models folder: every process contributes its state, rank 0
        writes while the others wait. Returns the first file's path. Weights or buffers that are not finite are
        never saved, so that a run always keeps a finite checkpoint to go back to. Under DDP every process first
        takes rank 0's buffers, so that all of them go on with the model saved, as they do after a resume."""
        distributed.broadcast_buffers(self.model)
        bad = [name for name, t in self.model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if self._any_rank(torch.tensor(bool(bad), device=self.device)):
            raise TrainingError(
                f"The model's weights or buffers hold NaN or Inf values ({', '.join(bad[:3]) or 'on another process'}"
                                f"{', ...' if len(bad) > 3 else ''}) at step {self.global_step}, so {', '.join(names)} was not "
                                "written: the checkpoints saved before are finite and intact. Lower the learning rate, set "
                                "trainer.grad_clip_norm, or check the data; then continue from the last checkpoint with --resume or "
                                "start again.")
        paths = [self.run.models / name for name in names]
        distributed.on_main(save_checkpoint, self.state_dict(), paths)
        self.last_save_time = time.monotonic()
        return paths[0]

    def save_epoch(self, epoch: int, epoch_log: dict[str, float], improved: bool) -> Path:
        """The end-of-epoch saves: `checkpoint-latest.pth`, `model_best.pth` when the monitored value improved,
        and `checkpoint-epochN.pth` every `save_period` epochs, of which the `save_top_k` best are kept."""
        names = [LATEST, BEST] if improved else [LATEST]
        evict: list[str] = []
        if self.cfg["save_period"] and epoch % self.cfg["save_period"] == 0:
            write, evict = self.monitor.keep(epoch, epoch_log, self.cfg["save_top_k"])
            if write:
                names.append(f"checkpoint-epoch{epoch}.pth")
        latest = self.save(names)
        for name in evict if self.dist.is_main else ():
            (self.run.models / name).unlink(missing_ok=True)
        if not self.disk_use_told and self.dist.is_main:
            self.disk_use_told = True
            self.tell_disk_use(latest.stat().st_size / 2**20)
        if improved:
            log.info("Saved %s (%s %.6g).", self.run.models / BEST, self.monitor.key, self.monitor.best)
        return latest

    def tell_disk_use(self, megabytes: float) -> None:
        """After the first end-of-epoch save: how much disk the run's checkpoints take, at most."""
        k = self.cfg["save_top_k"] if self.cfg["save_period"] else 0
        if k < 0:
            log.warning("Each checkpoint takes %.3g MiB, and trainer.save_top_k is -1: every epoch's checkpoint is "
                        "kept, %.3g MiB more each epoch. Set save_top_k to keep only the best epochs.", megabytes,
                        megabytes / self.cfg["save_period"])
            return
        keep = 1 + bool(self.monitor.key) + k
        names = ["checkpoint-latest.pth", *(["model_best.pth"] if self.monitor.key else []),
                 *([f"the {k} {'best' if self.monitor.key else 'newest'} epochs' (trainer.save_top_k)"] if k else [])]
        listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
        log.info("Each checkpoint takes %.3g MiB; the run keeps at most %d in %s, %.3g MiB: %s.", megabytes, keep,
                 self.run.models, megabytes * keep, listed)

    def check_best_file(self) -> None:
        """On resume: the best value the monitor recorded must be the one `model_best.pth` holds. A kill, a full
        disk or a second Ctrl+C between writing `checkpoint-latest.pth` and `model_best.pth` leaves an older
        `model_best.pth`: when the resumed state is that best one, it is written again; otherwise the monitor goes
        on from the value the file holds (or from none, without a readable file)."""
        if self.monitor.key is None or not self.history:
            return
        held, epochs = distributed.on_main(best_in_file, self.run.models / BEST)
        # The best is the last epoch that reached the best value (a tie keeps the later one).
        last = max((i + 1 for i, row in enumerate(self.history) if row.get(self.monitor.key) == self.monitor.best),
                   default=None)
        if held == self.monitor.best and (last is None or epochs == last):
            return
        if self.batch_idx == 0 and last == len(self.history):
            log.warning("model_best.pth does not hold the best %s (%.6g) that the checkpoint records; the run was "
                        "stopped between the two writes. Writing it again from the checkpoint.",
                        self.monitor.key, self.monitor.best)
            self.save([BEST])
            return
        if held == self.monitor.best:  # an earlier epoch of the same value, and the later one is gone
            log.warning("model_best.pth holds epoch %d, which ties the best %s (%.6g) of epoch %s; the run was stopped "
                        "between the two writes, and the later epoch's weights cannot be written again.", epochs,
                        self.monitor.key, held, last)
            return
        log.warning("model_best.pth holds %s %s, not the recorded best %.6g; the best model goes on from the file's "
                    "value.", self.monitor.key, "no readable value" if held is None else f"{held:.6g}",
                    self.monitor.best)
        self.monitor.best = held if held is not None else (math.inf if self.monitor.mode == "min" else -math.inf)

    def write_history(self) -> None:
        """Every epoch's values, one JSON line each, in `history.jsonl`: for programs that follow a run as it
        trains without TensorBoard (tune.py prunes trials with it). Written whole from the history the checkpoint
        holds, so that after a kill and `--resume` the file matches the checkpoint, whatever moment the kill hit."""
        distributed.on_main(write_history, self.run, self.history)
