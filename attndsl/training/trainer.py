"""The training loop behind `attndsl train` and `attndsl.train(...)`, on the PyTorch and
NumPy backends (`attndsl.training.engines`: what a step means on each).

Settings come from the spec's `train { ... }` section and are overridden by arguments:
loss (cross-entropy, label smoothing, ignore index; causal-LM or masked-LM targets),
optimizer (sgd, adam, adamw), schedule (constant, noam, cosine, linear), gradient
clipping and accumulation, bf16 autocast, periodic validation, atomic checkpoints and
exact resume (weights, optimizer state, step, RNG states and tokenizer are saved).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attndsl.errors import TrainingError
from attndsl.model import Model
from attndsl.training.data import (
    ArrayDataset,
    PairedDataset,
    TextDataset,
    load_text,
    masked_lm_batch,
)
from attndsl.training.losses import loss_spec
from attndsl.training.tokenizers import make_tokenizer, tokenizer_from_json

Dataset = TextDataset | PairedDataset | ArrayDataset
BUNDLED_TEXT = Path(__file__).resolve().parent.parent / "data" / "tiny_shakespeare.txt"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _deferred_signals() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM only append their number to the yielded list (the
    loop checks it between steps); a second one raises KeyboardInterrupt at once. Outside the
    main thread signals cannot be caught, and this does nothing."""
    stop: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum: int, frame: Any) -> None:
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainConfig:
    steps: int = 200
    batch: int = 12
    seq: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.9
    rho: float = 0.04               # sophia only
    hessian_interval: int = 10      # sophia only: steps between Hessian estimates
    schedule: str = "cosine"
    warmup: int = 100
    min_lr: float = 1e-4
    d_model: int = 512          # noam only
    noam_scale: float = 1.0     # noam only
    period: int = 0             # cosine_restarts: first cycle (0: a quarter of the run)
    mult: int = 1               # cosine_restarts: cycle growth
    gamma: float = 0.0          # exponential (0: reach min_lr at the last step)
    clip: float = 1.0
    grad_accum: int = 1
    eval_every: int = 100
    eval_iters: int = 20
    amp: bool = False
    seed: int = 1337
    shard: bool = False             # FSDP over the ranks of a process group (torch)

    @classmethod
    def from_spec(cls, train: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Defaults < the spec's train section < explicit overrides (None = not given)."""
        cfg = cls()
        opt = train.get("optimizer")
        if opt:
            cfg.optimizer = opt["name"]
            for key in ("lr", "eps", "weight_decay", "momentum", "rho"):
                if key in opt:
                    setattr(cfg, key, opt[key])
            cfg.hessian_interval = opt.get("interval", cfg.hessian_interval)
            if "betas" in opt:
                cfg.betas = tuple(opt["betas"])  # type: ignore[assignment]
        sched = train.get("schedule")
        if sched:
            cfg.schedule = sched["name"]
            cfg.warmup = sched.get("warmup", cfg.warmup)
            cfg.min_lr = sched.get("min_lr", cfg.min_lr)
            cfg.d_model = sched.get("d_model", cfg.d_model)
            cfg.noam_scale = sched.get("scale", cfg.noam_scale)
            for key in ("period", "mult", "gamma"):
                setattr(cfg, key, sched.get(key, getattr(cfg, key)))
        for key in ("clip", "grad_accum", "steps", "batch", "seq", "warmup"):
            if key in train and not isinstance(train[key], dict):
                setattr(cfg, key, train[key])
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    def make_schedule(self) -> Any:
        from attndsl.training.schedules import make_schedule
        if self.schedule == "constant":
            return make_schedule("constant", lr=self.lr)
        if self.schedule == "noam":
            return make_schedule("noam", d_model=self.d_model, warmup=self.warmup,
                                 scale=self.noam_scale)
        warmup = min(self.warmup, max(self.steps - 1, 0))
        if self.schedule == "cosine_restarts":
            return make_schedule("cosine_restarts", lr=self.lr, warmup=warmup,
                                 period=self.period or max(1, (self.steps - warmup) // 4),
                                 mult=self.mult, min_lr=self.min_lr)
        if self.schedule == "exponential":
            floor = self.min_lr if 0 < self.min_lr < self.lr else self.lr * 1e-2
            gamma = self.gamma or (floor / self.lr) ** (1 / max(1, self.steps - warmup))
            return make_schedule("exponential", lr=self.lr, warmup=warmup, gamma=gamma,
                                 min_lr=self.min_lr)
        return make_schedule(self.schedule, lr=self.lr, warmup=warmup,
                             total=self.steps, min_lr=self.min_lr)


@dataclass
class TrainResult:
    step: int
    train_loss: float
    val_loss: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_per_step: float = 0.0
    tokens_per_second: float = 0.0


class Trainer:
    """Owns the model, optimizer, schedule, data and RNGs of one training run."""

    def __init__(self, model: Model, data: Dataset, config: TrainConfig,
                 mask_token: int | None = None):
        from attndsl.training.engines import make_engine
        self.model, self.data, self.cfg = model, data, config
        self.loss_spec = loss_spec(model.graph)
        self.mask_token = mask_token
        # recurrent state (`state` in the spec): consecutive segments, memory carried along
        self.states: list[str] = list(model.graph.meta.get("states", []))
        if self.states and not isinstance(data, TextDataset):
            raise TrainingError("a spec with `state` trains on a text stream (consecutive "
                                "segments carry the memory)", None)
        if isinstance(data, PairedDataset):
            self.inputs = self.paired_inputs()
        elif isinstance(data, ArrayDataset):
            self.inputs = self.array_inputs()
        else:
            self.inputs = self.stream_inputs()
        self.engine = make_engine(model, config)
        self.schedule = config.make_schedule()
        self.memory: dict[str, Any] = {}
        self.segment_index = 0
        self.step = 0
        self.rng = np.random.default_rng(config.seed)
        self.history: list[dict[str, float]] = []
        self.rank, self.world = distributed_rank()

    def shard(self, arrays: list[Any]) -> list[Any]:
        """This rank's rows of a global batch (every rank draws the same N x batch rows
        from the shared data RNG, so N ranks see exactly what one process with N x batch
        would)."""
        if self.world == 1:
            return arrays
        lo, hi = self.rank * self.cfg.batch, (self.rank + 1) * self.cfg.batch
        return [a[lo:hi] for a in arrays]

    # -- batches and losses ----------------------------------------------------------------------
    def stream_inputs(self) -> tuple[str, dict[str, str]]:
        """The token-stream input (the first input, int[B, T]) and how every other input is
        filled: int inputs of the same shape with zeros (segment ids), bool ones with True
        (no padding). Anything else (a second sequence, as in encoder-decoder specs) needs
        paired data, which text-file training does not provide."""
        graph = self.model.graph
        names = list(graph.inputs)
        stream = graph.nodes[graph.inputs[names[0]]].type
        if stream.dtype != "int" or stream.rank != 2:
            raise TrainingError(f"text training feeds token ids to the first input, but "
                                f"'{names[0]}' is {stream}", None,
                                "declare the token input first, as int[B, T]")
        fill: dict[str, str] = {}
        states = set(graph.meta.get("states", ()))          # carried by the trainer
        for name in names[1:]:
            if name in states:
                continue
            t = graph.nodes[graph.inputs[name]].type
            if t.shape != stream.shape or t.dtype == "float":
                raise TrainingError(f"input '{name}' ({t}) cannot be derived from a text "
                                    "stream", None, "train encoder-decoder or multi-input "
                                    "specs from Python with Model.value_and_grad")
            fill[name] = t.dtype
        return names[0], fill

    def paired_inputs(self) -> tuple[str, dict[str, str]]:
        """Encoder-decoder specs: the two required int inputs are source and target (in
        declaration order); an optional bool input shaped like the source gets the padding
        mask (true = real token); other optional inputs keep their defaults."""
        graph = self.model.graph
        optional = graph.meta.get("input_defaults", {})
        types = {n: graph.nodes[nid].type for n, nid in graph.inputs.items()}
        required = [n for n in types if n not in optional]
        if len(required) != 2 or any(types[n].dtype != "int" or types[n].rank != 2
                                     for n in required):
            raise TrainingError("paired data feeds an encoder-decoder spec: two int[B, L] "
                                f"inputs (source, target); this spec needs {', '.join(required)}")
        mask = next((n for n in optional if types[n].dtype == "bool"
                     and types[n].shape == types[required[0]].shape), None)
        return required[0], {"target": required[1], **({"mask": mask} if mask else {})}

    def array_inputs(self) -> tuple[str, dict[str, str]]:
        """`.npz` data: an array per required input (by name), plus `targets`."""
        graph = self.model.graph
        optional = graph.meta.get("input_defaults", {})
        arrays = self.data.arrays
        missing = [n for n in graph.inputs if n not in optional and n not in arrays]
        unknown = [k for k in arrays if k != "targets" and k not in graph.inputs]
        if missing or unknown:
            raise TrainingError(f"the array file must hold one array per model input plus "
                                f"'targets': missing {missing or 'none'}, unknown "
                                f"{unknown or 'none'}")
        return "", {}

    def batch(self, split: str, rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
        size = self.cfg.batch * (self.world if split == "train" else 1)
        if isinstance(self.data, ArrayDataset):
            arrays = self.data.get_batch(split, size, rng)
            if split == "train":
                arrays = dict(zip(arrays, self.shard(list(arrays.values()))))
            return {k: v for k, v in arrays.items() if k != "targets"}, arrays["targets"]
        if isinstance(self.data, PairedDataset):
            src, tgt, labels, real = self.data.get_batch(split, size, self.cfg.seq,
                                                         rng, self.loss_spec["ignore_index"])
            if split == "train":
                src, tgt, labels, real = self.shard([src, tgt, labels, real])
            source, roles = self.inputs
            inputs = {source: src, roles["target"]: tgt}
            if "mask" in roles:
                inputs[roles["mask"]] = real
            return inputs, labels
        if self.states and split == "train":   # the next segment of each of N x B streams
            x, y, fresh = self.data.segment("train", size, self.cfg.seq, self.segment_index)
            self.segment_index += 1
            if fresh:
                self.memory = {}
        else:
            x, y = self.data.get_batch(split, size, self.cfg.seq, rng)  # (N x B, T) each
        if self.loss_spec["target"] == "masked_lm":
            if self.mask_token is None:
                raise TrainingError("masked-LM training needs a mask token id")
            x, y = masked_lm_batch(x, self.data.tokenizer.vocab_size, self.mask_token, rng,
                                   ignore_index=self.loss_spec["ignore_index"])
        if split == "train":
            x, y = self.shard([x, y])
        stream, fill = self.inputs
        inputs = {stream: x}
        for name, dtype in fill.items():
            inputs[name] = np.ones(x.shape, bool) if dtype == "bool" else np.zeros_like(x)
        if split == "train":
            inputs.update(self.memory)
        return inputs, y

    def estimate_loss(self, split: str) -> float:
        """Mean loss over eval_iters batches from a fixed RNG (does not disturb training);
        with recurrent state, over the split's first eval_iters consecutive segments, the
        memory carried from one to the next."""
        rng = np.random.default_rng(self.cfg.seed + 1)
        losses = []
        memory: dict[str, Any] = {}
        with self.engine.evaluating():
            for i in range(self.cfg.eval_iters):
                if self.states:
                    x, y, fresh = self.data.segment(split, self.cfg.batch, self.cfg.seq, i)
                    inputs = {self.inputs[0]: x, **({} if fresh else memory)}
                    memory = {n: None for n in self.states}
                    losses.append(self.engine.eval_loss(inputs, y, keep=memory))
                    continue
                inputs, y = self.batch(split, rng)
                losses.append(self.engine.eval_loss(inputs, y))
        return float(np.mean(losses))

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self) -> float:
        lr = self.schedule(self.step + 1 if self.cfg.schedule == "noam" else self.step)
        self.engine.set_lr(lr)
        total = 0.0
        for _ in range(self.cfg.grad_accum):
            inputs, y = self.batch("train", self.rng)
            keep = {n: None for n in self.states} if self.states else None
            total += self.engine.accumulate(inputs, y, 1.0 / self.cfg.grad_accum, keep)
            if keep:
                self.memory = keep                      # carried to the next segment
        if not np.isfinite(total):
            self.engine.discard()
            raise TrainingError(
                f"the loss is {total} at step {self.step + 1}; stopped before the update "
                "(the last checkpoint, if any, holds finite weights)", None,
                f"lower the learning rate (now {lr:.3g}) or clip gradients (--clip)")
        self.engine.apply(self.cfg.clip)
        k = self.cfg.hessian_interval
        if self.cfg.optimizer == "sophia" and self.step % k == k - 1:
            self.hessian_step(inputs, y)
        self.step += 1
        return total

    def hessian_step(self, inputs: dict[str, Any], targets: np.ndarray) -> None:
        """Sophia's Gauss-Newton-Bartlett estimate (Liu et al. 2023, Alg. 2): labels sampled
        from the model's own distribution (seeded by the step, so a resumed run samples the
        same), the gradient of the loss on them, h <- b2 h + (1 - b2) B g*g."""
        ignore = self.loss_spec["ignore_index"]
        with self.engine.evaluating():
            logits = self.model.to_numpy(self.model(**inputs))[self.loss_spec["output"]]
        z = logits.astype(np.float64).reshape(-1, logits.shape[-1])     # (N, C)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        u = np.random.default_rng([self.cfg.seed, 3, self.step]).random((len(z), 1))
        sampled = np.minimum((cdf < u).sum(axis=1), z.shape[1] - 1).reshape(targets.shape)
        sampled = np.where(np.asarray(targets) == ignore, ignore, sampled).astype(np.int64)
        tokens = int((sampled != ignore).sum()) * self.world
        self.engine.update_hessian(inputs, sampled, tokens)

    def run(self, progress: bool = True, checkpoint_dir: str | Path | None = None,
            save_every: int = 0, extra_state: dict[str, Any] | None = None) -> TrainResult:
        """Train to `cfg.steps`. Ctrl-C or SIGTERM stops at the next step boundary (a step
        is never split, so the saved data-RNG and weights agree and `--resume` continues
        exactly) and saves; a second signal aborts at once, keeping the previous checkpoint.
        A non-finite loss stops training with a TrainingError before the weights take it."""
        from tqdm import tqdm
        cfg = self.cfg
        tokens_per_step = cfg.batch * cfg.seq * cfg.grad_accum * self.world
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress or self.rank != 0,
                   dynamic_ncols=True, desc="train")
        loss = float("nan")
        val: float | None = None
        spent = 0.0
        start_step = self.step
        with _deferred_signals() as stop:
            while self.step < cfg.steps and not stop:
                t0 = time.perf_counter()
                loss = self.train_step()
                spent += time.perf_counter() - t0
                row: dict[str, float] = {"step": self.step, "loss": loss,
                                         "lr": self.engine.lr}
                if cfg.eval_every and (self.step % cfg.eval_every == 0
                                       or self.step == cfg.steps):
                    val = self.estimate_loss("val")
                    row["val_loss"] = val
                self.history.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}",
                                tok_s=f"{tokens_per_step * (self.step - start_step) / spent:,.0f}",
                                **({"val": f"{val:.4f}"} if val is not None else {}))
                if checkpoint_dir and save_every and self.step % save_every == 0:
                    self.save(checkpoint_dir, extra_state or {})
        bar.close()
        if checkpoint_dir:
            self.save(checkpoint_dir, extra_state or {})
        self.engine.finish()
        if stop:
            if checkpoint_dir and self.rank == 0:
                print(f"interrupted: checkpoint of step {self.step} saved to {checkpoint_dir}",
                      file=sys.stderr)
            raise TrainingInterrupted(stop[0])
        steps_run = max(1, self.step - start_step)
        return TrainResult(self.step, loss, val, self.history, spent / steps_run,
                           tokens_per_step * steps_run / max(spent, 1e-9))

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, Any]) -> None:
        """Write a checkpoint (rank 0 only, under torchrun: the ranks hold the same state;
        sharded, every rank first takes part in gathering it)."""
        from attndsl.training.checkpoint import numpy_rng_state, save_checkpoint
        if self.rank != 0 and not self.engine.sharded:
            return
        tensors, engine_state = self.engine.state()
        weights = self.engine.weights()
        if self.rank != 0:
            return
        tensors = {**tensors, **{f"memory.{k}": np.asarray(v, np.float32)
                                 for k, v in self.memory.items()}}
        state = {"step": self.step, **engine_state, "rng": numpy_rng_state(self.rng),
                 "segment_index": self.segment_index, "memory": sorted(self.memory),
                 "backend": self.model.backend.name, "world_size": self.world,
                 "config": asdict(self.cfg),
                 "history": self.history, **extra}
        if self.data.tokenizer is not None:
            state["tokenizer"] = self.data.tokenizer.to_json()
        if isinstance(self.data, PairedDataset):
            state["specials"] = {"pad": self.data.pad, "bos": self.data.bos,
                                 "eos": self.data.eos}
        save_checkpoint(directory, weights, tensors, state)

    def restore(self, directory: str | Path) -> dict[str, Any]:
        """Weights, optimizer state, step and RNGs from a checkpoint of either backend."""
        from attndsl.training.checkpoint import load_checkpoint, numpy_rng_from_state
        weights, opt_tensors, state = load_checkpoint(directory)
        self.engine.load_weights(weights)
        self.engine.restore(opt_tensors, state)
        self.step = int(state["step"])
        self.rng = numpy_rng_from_state(state["rng"])
        self.segment_index = int(state.get("segment_index", 0))
        self.memory = {k: np.asarray(opt_tensors[f"memory.{k}"])
                       for k in state.get("memory", []) if k in self.states}
        self.history = list(state.get("history", []))
        return state


def train(model: Model, data: TextDataset | str, steps: int | None = None,
          batch: int | None = None, seq: int | None = None, progress: bool = False,
          checkpoint_dir: str | Path | None = None, memory_budget: int | None = None,
          **overrides: Any) -> TrainResult:
    """Train `model` (torch or numpy backend) on a TextDataset or raw text (char tokenizer).

    Keyword overrides are TrainConfig fields (lr, schedule, warmup, clip, grad_accum, amp,
    eval_every, ...); everything else comes from the spec's train section. `memory_budget`
    (bytes, torch) checkpoints as few repeat iterations as make a step's predicted peak fit
    (`attndsl.training.memory_budget`)."""
    dataset = data if isinstance(data, TextDataset) else TextDataset(
        data, make_tokenizer("char", data))
    cfg = TrainConfig.from_spec(model.graph.meta.get("train", {}), steps=steps, batch=batch,
                                seq=seq, **overrides)
    if memory_budget is not None:
        from attndsl.training.memory_budget import apply_budget
        print(apply_budget(model, cfg.optimizer, cfg.batch, cfg.seq, memory_budget))
    return Trainer(model, dataset, cfg).run(progress=progress, checkpoint_dir=checkpoint_dir)


def check_device(device: str) -> None:
    """A device torch has here, before anything is built on it."""
    import torch
    kind = device.partition(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}.get(kind, False)
    if not available:
        raise TrainingError(f"device {device!r} is not available on this machine", None,
                            "use --device cpu" + (" (torch sees no CUDA GPU)"
                                                  if kind == "cuda" else ""))
    if kind == "cuda" and ":" in device and int(device.partition(":")[2]) >= (
            torch.cuda.device_count()):
        raise TrainingError(f"device {device!r}: torch sees {torch.cuda.device_count()} GPUs")


def launch_ranks(args: argparse.Namespace) -> int:
    """`attndsl train ... --nproc N`: the same command under torchrun, N processes on this
    machine (the exit status is torchrun's)."""
    import subprocess
    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            argv.append(item)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={args.nproc}", "-m", "attndsl", *argv]
    print(f"launching {args.nproc} ranks: torchrun --standalone --nproc-per-node="
          f"{args.nproc} -m attndsl {' '.join(argv)}", flush=True)
    return subprocess.call(cmd)


def join_process_group(device: str) -> str:
    """Under torchrun: join the process group (gloo on CPU, NCCL on GPUs), pin this rank's
    GPU, and silence stdout on ranks other than 0. Returns the rank's device."""
    import torch
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
    return device


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed process group, else (0, 1)."""
    dist = getattr(sys.modules.get("torch"), "distributed", None)   # never imports torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_dataset(path: str | None, args: argparse.Namespace, tokenizer: Any) -> Dataset:
    """The dataset a `--data` file means, by extension: `.tsv`/`.jsonl` source-target pairs,
    `.npz` arrays, anything else UTF-8 text (default: the bundled sample). `tokenizer`: a
    resumed run's; else one is built from the data (`--tokenizer`, `--vocab-size`)."""
    from attndsl.training.data import ARRAY_SUFFIXES, PAIRED_SUFFIXES, load_pairs
    suffix = Path(path).suffix if path else ""
    if suffix in ARRAY_SUFFIXES:
        return ArrayDataset(path)
    if suffix in PAIRED_SUFFIXES:
        pairs = load_pairs(path)
        text = "\n".join(s + "\n" + t for s, t in pairs)
    else:
        text = load_text(path or BUNDLED_TEXT)
    if tokenizer is None:
        tokenizer = make_tokenizer(args.tokenizer, text,
                                   args.vocab_size if args.tokenizer == "bpe" else None)
    return PairedDataset(pairs, tokenizer) if suffix in PAIRED_SUFFIXES else TextDataset(
        text, tokenizer)


# -- CLI -----------------------------------------------------------------------------------------

def train_from_cli(args: argparse.Namespace) -> int:
    import attndsl
    from attndsl.cli import parse_sets
    from attndsl.frontend.parser import read_source
    from attndsl.training.checkpoint import check_checkpoint_dir
    check_checkpoint_dir(args.out)                  # before any work, not after all steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (args.nproc > 1 or world > 1) and args.backend != "torch":
        raise TrainingError("data-parallel training (--nproc, torchrun) is for the torch "
                            "backend", None, "add --backend torch")
    if args.shard and args.nproc == 1 and world == 1:
        raise TrainingError("--shard splits the model over data-parallel ranks", None,
                            "add --nproc N (N >= 2), or run under torchrun")
    if args.nproc > 1 and world == 1:
        return launch_ranks(args)
    options: dict[str, Any] = {}
    if args.backend == "torch":
        check_device(args.device)
        if world > 1:
            args.device = join_process_group(args.device)
        options = {"device": args.device, "checkpointing": args.checkpointing}
    else:
        for flag, given in (("--device " + args.device, args.device != "cpu"),
                            ("--checkpointing", args.checkpointing), ("--amp", args.amp)):
            if given:
                raise TrainingError(f"{flag} is for the torch backend", None,
                                    "drop it, or train with --backend torch")
    config: dict[str, Any] = dict(parse_sets(args.set))
    resume_state: dict[str, Any] | None = None
    saved: dict[str, Any] = {}
    if args.resume:
        from attndsl.training.checkpoint import read_state
        _, resume_state = read_state(args.resume)       # tensors are read by restore()
        config = {**resume_state.get("spec_config", {}), **config}
        tokenizer = None
        if "tokenizer" in resume_state:
            try:
                tokenizer = tokenizer_from_json(resume_state["tokenizer"])
            except (KeyError, ValueError) as e:
                raise TrainingError(f"{args.resume}/state.json: no usable tokenizer ({e})"
                                    ) from None
        saved_data = resume_state.get("data")
        if args.data and (saved_data is None or Path(args.data).resolve() != Path(saved_data)):
            raise TrainingError(f"--data {args.data} is not the data {args.resume} was trained "
                                f"on ({saved_data or 'the bundled sample'})", None,
                                "resume without --data, or start a new run")
        data = load_dataset(saved_data, args, tokenizer)
        saved = resume_state.get("config", {})
    else:
        data = load_dataset(args.data, args, None)
    # batch and seq: the flag, else what the resumed run used, else the defaults
    # the global batch (ranks x per-rank batch) carries over a resume with another --nproc
    saved_global = saved.get("batch") and saved["batch"] * (resume_state or {}).get(
        "world_size", 1)
    batch = args.batch
    if batch is None and saved_global:
        if saved_global % world:
            raise TrainingError(f"the resumed run's global batch {saved_global} does not "
                                f"split over {world} ranks", None, "give --batch")
        batch = saved_global // world
    seq = args.seq or saved.get("seq")
    for flag, given, before in (("--batch", args.batch and args.batch * world, saved_global),
                                ("--seq", args.seq, saved.get("seq"))):
        if given and before and given != before:
            print(f"note: {flag} {given} differs from the resumed run's {before}; the data "
                  "order will not match an uninterrupted run", file=sys.stderr)
    spec_text = read_source(args.spec)
    graph = attndsl.build(args.spec, config)
    graph_consts = graph.meta["consts"]
    mask_token = None
    vocab = getattr(data, "vocab_size", None) or (
        data.tokenizer.vocab_size if data.tokenizer is not None else None)
    if loss_spec(graph)["target"] == "masked_lm" and vocab is not None:
        mask_token, vocab = vocab, vocab + 1          # reserve one extra id for [MASK]
    if "vocab" in graph_consts and vocab is not None:
        config["vocab"] = vocab
    if args.dropout is not None:
        for key in graph_consts:
            if "dropout" in key:
                config.setdefault(key, args.dropout)
    model = attndsl.compile(args.spec, backend=args.backend, config=config, seed=args.seed,
                            layerdrop=args.layerdrop, **options)
    cfg = TrainConfig.from_spec(model.graph.meta.get("train", {}), steps=args.steps,
                                batch=batch, seq=seq, lr=args.lr, clip=args.clip,
                                schedule=args.schedule, warmup=args.warmup,
                                grad_accum=args.grad_accum, eval_every=args.eval_every,
                                eval_iters=args.eval_iters, amp=args.amp or None, seed=args.seed,
                                shard=args.shard or None)
    if args.memory_budget is not None:
        if args.checkpointing:
            raise TrainingError("--memory-budget chooses the checkpointed iterations itself",
                                None, "drop --checkpointing")
        from attndsl.training.memory_budget import apply_budget
        print(apply_budget(model, cfg.optimizer, cfg.batch, cfg.seq, args.memory_budget))
    trainer = Trainer(model, data, cfg, mask_token)
    if args.resume:
        try:
            trainer.restore(args.resume)
        except (KeyError, ValueError, TypeError) as e:
            raise TrainingError(f"cannot resume from {args.resume}: {e}") from None
        print(f"resumed from {args.resume} at step {trainer.step}")
    print(model.report().splitlines()[0])
    extra = {"spec_path": str(Path(args.spec).resolve()), "spec_text": spec_text,
             "spec_config": {k: v for k, v in config.items()},
             "data": str(Path(args.data).resolve()) if args.data else None}
    result = trainer.run(progress=not args.quiet, checkpoint_dir=args.out,
                         save_every=args.save_every, extra_state=extra)
    val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    print(f"step {result.step}: train loss {result.train_loss:.4f}{val}; "
          f"{result.seconds_per_step * 1000:.1f} ms/step, {result.tokens_per_second:,.0f} tok/s")
    print(f"checkpoint: {args.out}")
    if args.sample and loss_spec(model.graph)["target"] == "causal_lm" and isinstance(
            data, TextDataset):
        from attndsl.training.generate import sample_text
        print("--- sample ---")
        head = data.tokenizer.decode(data.tokens[:10000].tolist())
        prompt = "\n" if "\n" in head else head[:1]
        print(sample_text(model, data.tokenizer, prompt, args.sample, temperature=0.8,
                          top_k=None, top_p=None, seed=args.seed))
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0
