"""The `attndsl` command line: a thin layer over the Python API.

Every spec error prints `file:line:col: error[CODE]: message`, the source line with a
caret, and a hint, and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from attndsl.errors import AttnError, ConfigError, RuntimeInputError

EXIT_USAGE = 2


def parse_sets(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects name=value, got {item!r}", None,
                              "for example --set layers=2")
        out[key.strip()] = value.strip()
    return out


def config_of(args: argparse.Namespace) -> dict[str, str]:
    return parse_sets(getattr(args, "set", None))


# -- commands ------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from attndsl.frontend import build
    from attndsl.ir.stats import compute_stats, human
    graph = build(args.spec, config_of(args))
    stats = compute_stats(graph)
    ins = ", ".join(f"{n}: {graph.nodes[i].type}" for n, i in graph.inputs.items())
    outs = ", ".join(f"{n}: {graph.nodes[i].type}" for n, i in graph.outputs.items())
    print(f"{args.spec}: ok — {len(graph.nodes)} nodes, {stats.params:,} parameters "
          f"({human(stats.params)}); inputs {ins}; outputs {outs}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from attndsl.frontend import build, parse
    from attndsl.frontend.ast import dump
    from attndsl.ir.printer import print_graph, to_dot
    from attndsl.passes import optimize
    if args.grad and args.emit not in ("numpy", "graph"):
        raise ConfigError(f"--grad is for --emit numpy or graph, not {args.emit} (the torch "
                          "backend differentiates with autograd)", None)
    if args.emit == "ast":
        print(dump(parse(args.spec)))
        return 0
    graph = build(args.spec, config_of(args))
    level = 0 if args.no_opt else args.opt_level
    from attndsl.passes.select_attention import select_attention
    graph = select_attention(optimize(graph, level=level), args.attention).graph
    if args.grad:
        from attndsl.backends.numpy_autodiff import grad_module_source
        from attndsl.passes.reverse_mode import reverse_mode
        from attndsl.training.losses import loss_outputs, loss_spec
        if args.emit == "numpy":
            print(grad_module_source(graph, loss_spec(graph)), end="")
        else:
            print(print_graph(reverse_mode(graph, loss_outputs(loss_spec(graph)),
                                           training=True).graph, spans=args.spans), end="")
    elif args.emit == "graph":
        print(print_graph(graph, spans=args.spans), end="")
    elif args.emit == "dot":
        print(to_dot(graph), end="")
    else:
        from attndsl.backends import get_backend
        print(get_backend(args.emit, require_available=False).emit(graph), end="")
    if args.explain:
        from attndsl.passes.explain import explain
        backend = args.backend or (args.emit if args.emit in ("numpy", "torch", "cupy")
                                   else "numpy")
        env = dims_env(graph, args.batch, args.seq) if args.seq or args.batch else None
        print(explain(graph, backend, env), file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from attndsl.frontend import build
    from attndsl.ir.stats import compute_stats, human, human_bytes
    graph = build(args.spec, config_of(args))
    stats = compute_stats(graph)
    print(f"{args.spec}")
    print(f"parameters: {stats.params:,} ({human(stats.params)}, "
          f"{human_bytes(stats.param_bytes)} in float32)")
    for block, n in stats.params_by_block.items():
        print(f"  {block:<28} {n:>14,}")
    env = dims_env(graph, args.batch, args.seq)
    shown = ", ".join(f"{k}={v}" for k, v in env.items())
    missing = sorted(stats.flops.symbols() - set(env))
    if missing:
        print(f"forward FLOPs: {stats.flops}")
        print(f"activation memory: {stats.activation_bytes} bytes")
        print(f"(give sizes for {', '.join(missing)} to get numbers)")
        return 0
    from attndsl.model import memory_lines
    from attndsl.passes import optimize
    ev = stats.evaluate(env)
    graph = optimize(graph)
    print(f"forward FLOPs ({shown}): {ev['flops']:,} ({human(ev['flops'])}FLOP)")
    for line in memory_lines(graph, env, args.backend):
        print(line)
    if args.measure:
        peak, how = measure_forward(args, env)
        print(f"measured peak of one forward ({shown}, {args.backend}, random weights): "
              + (f"{human_bytes(peak)} ({how})" if peak is not None else how))
    return 0


def measure_forward(args: argparse.Namespace, env: dict[str, int]) -> tuple[int | None, str]:
    """The activation bytes one real forward adds at its peak: NumPy's allocations by
    tracemalloc, torch's by the process's peak RSS (Linux) — after a warm-up call."""
    import tracemalloc

    import attndsl
    from attndsl.model import random_inputs
    model = attndsl.compile(args.spec, backend=args.backend, config=config_of(args), seed=0)
    inputs = random_inputs(model.graph, env, 0)
    model(**inputs)
    if args.backend != "torch":
        tracemalloc.start()
        try:
            model(**inputs)
            return tracemalloc.get_traced_memory()[1], "tracemalloc"
        finally:
            tracemalloc.stop()
    try:
        before = _status_bytes("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                 # reset the high-water mark
        model(**inputs)
        return _status_bytes("VmHWM:") - before, "peak RSS growth"
    except OSError:
        return None, "not measurable here (needs Linux /proc for torch's allocations)"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def dims_env(graph: Any, batch: int | None, seq: int | None) -> dict[str, int]:
    """Bind symbolic dims for stats/--random: B from --batch, sequence dims from --seq (or
    their bound), every other symbol from its bound."""
    env: dict[str, int] = {}
    bounds = graph.meta.get("dim_bounds", {})
    for nid in graph.inputs.values():
        for axis, d in enumerate(graph.nodes[nid].type.shape):
            for s in d.symbols():
                if s in env:
                    continue
                if axis == 0:
                    env[s] = batch or 1
                elif seq is not None:
                    env[s] = min(seq, bounds.get(s, seq))
                    if env[s] < seq:
                        print(f"note: --seq {seq} is above the spec's bound {s} <= {env[s]}: "
                              f"using {s}={env[s]} (--set can raise the constant it comes "
                              f"from, e.g. the context length)", file=sys.stderr)
                elif s in bounds:
                    env[s] = bounds[s]
    return env


def cmd_run(args: argparse.Namespace) -> int:
    import attndsl
    from attndsl.ir.stats import compute_stats
    from attndsl.passes.liveness import peak_memory
    check_output_file(args.output)
    itemsize = 8 if args.dtype == "float64" else 4
    graph = attndsl.build(args.spec, config_of(args))          # built once: checked, compiled
    check_memory(compute_stats(graph).params * itemsize, args.max_memory, "run")
    wanted = [n.strip() for n in args.outputs.split(",") if n.strip()] if args.outputs else None
    model = attndsl.compile(graph, backend=args.backend, seed=args.seed, dtype=args.dtype,
                            weights=None if args.quantize else args.weights, outputs=wanted,
                            attention=args.attention, opt_level=args.opt_level)
    if args.quantize:
        from attndsl.quantize import quantized_model
        model = quantized_model(model, args.quantize, args.weights)
        print(model.quantize_report, file=sys.stderr)
    if args.input:
        inputs = load_inputs(args.input)
        model.validate_inputs(inputs)                          # binds the sizes for the estimate
        env = model.last_dims
    else:
        env = dims_env(model.graph, args.batch, args.seq or 16)
        from attndsl.model import random_inputs
        inputs = random_inputs(model.graph, env, args.seed)
    check_memory(model.stats.params * itemsize
                 + peak_memory(model.graph, env, args.backend, itemsize).peak,
                 args.max_memory, "run")
    outputs = model.to_numpy(model(**inputs))
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)} {summarize(value)}")
    if args.output:
        from attndsl.training.checkpoint import atomic_write
        atomic_write(args.output, lambda f: np.savez(f, **outputs))
        print(f"wrote {args.output}")
    return 0


def add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=("int8",),
                   help="int8 weight-only quantization of the linear layers (per output "
                   "channel); --weights may be float or an int8 file saved from a quantized "
                   "model")


def check_output_file(path: str | None) -> None:
    """An output file path whose directory exists and which is not itself a directory."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"-o {path}: is a directory; give a file name")
    if not p.parent.is_dir():
        raise ValueError(f"-o {path}: directory {p.parent} does not exist")


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def parse_size(text: str) -> int:
    """'512MB', '2GB', '1.5GiB', '1000000' -> bytes (an argparse type)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 512MB or 2GB, got {text!r}")
    unit = m.group(2).rstrip("b").rstrip("i")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(unit or " "))


def check_memory(needed: int, limit: int | None, what: str) -> None:
    """Refuse before allocating when the estimate exceeds --max-memory (default: the memory
    this machine has available now)."""
    limit = limit if limit is not None else available_memory()
    if limit is not None and needed > limit:
        from attndsl.ir.stats import human_bytes
        raise ValueError(f"{what} would need about {human_bytes(needed)} (weights, and the "
                         "peak of one forward once sizes are known: `attndsl stats`), over the "
                         f"{human_bytes(limit)} limit; nothing was allocated. Pass "
                         "--max-memory SIZE to allow more")


def summarize(value: np.ndarray, chunk: int = 1 << 20) -> str:
    """mean/std/min/max of a float array, in chunks (no temporaries the size of a
    [B, T, vocab] logits tensor); flags non-finite values."""
    if value.dtype.kind != "f" or not value.size:
        return ""
    flat = value.reshape(-1)
    total = squares = 0.0
    low, high, finite = np.inf, -np.inf, True
    for i in range(0, flat.size, chunk):
        part = flat[i:i + chunk].astype(np.float64)
        total += part.sum()
        squares += np.square(part).sum()
        low, high = min(low, part.min()), max(high, part.max())
        finite = finite and bool(np.isfinite(part).all())
    mean = total / flat.size
    std = np.sqrt(max(squares / flat.size - mean * mean, 0.0))
    return (f"mean {mean:+.4f} std {std:.4f} min {low:+.4f} max {high:+.4f}"
            + ("" if finite else "  (non-finite values!)"))


def load_inputs(items: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise RuntimeInputError(f"--input expects name=file.npy, got {item!r}")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RuntimeInputError(f"cannot read input '{name}' from {path}: {e}") from None
    return out


def cmd_init(args: argparse.Namespace) -> int:
    import attndsl
    from attndsl.ir.stats import compute_stats
    check_output_file(args.output)
    graph = attndsl.build(args.spec, config_of(args))
    check_memory(compute_stats(graph).params * 4 * 2, args.max_memory, "init")  # + the file
    model = attndsl.compile(graph, seed=args.seed)
    model.save(args.output)
    print(f"wrote {model.stats.params:,} parameters ({len(model.graph.params)} tensors) to "
          f"{args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from attndsl.training.trainer import train_from_cli
    return train_from_cli(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from attndsl.training.generate import generate_from_cli
    return generate_from_cli(args)


def cmd_inspect(args: argparse.Namespace) -> int:
    from attndsl.inspect import attention_maps, entropy_table, plot, self_attention
    from attndsl.training.checkpoint import model_from_source
    from attndsl.training.tokenizers import tokenizer_of
    check_output_file(args.output)
    model, state = model_from_source(args.source, args.backend, config_of(args),
                                     weights=args.weights)
    tokenizer = tokenizer_of(state)
    optional = model.graph.meta.get("input_defaults", {})
    required = [n for n in model.graph.inputs if n not in optional]
    if len(required) != 1 or model.graph.nodes[model.graph.inputs[required[0]]].type.dtype \
            != "int":
        raise ConfigError(f"inspect --text feeds one token input; this spec needs "
                          f"{', '.join(required)}", None)
    ids = tokenizer.encode(args.text)
    if not ids:
        raise ConfigError("--text has no token the tokenizer knows", None)
    maps = attention_maps(model, {required[0]: np.array([ids])})
    if args.layer is not None and args.layer not in maps:
        raise ConfigError(f"no attention named {args.layer!r}", None,
                          f"the model has {', '.join(maps)}")
    layer = args.layer or next(iter(maps))
    heads = maps[layer].shape[1]
    if args.head is not None and args.head >= heads:
        raise ConfigError(f"--head {args.head}: {layer} has {heads} heads", None)
    print(entropy_table(maps))
    labels = [tokenizer.decode([i]) for i in ids]
    path = plot(maps, labels, args.output, layer, args.head)
    print(f"wrote {path}: {layer} ({'head ' + str(args.head) if args.head is not None else f'{heads} heads'}), "
          + (f"rollout over {len(self_attention(maps))} self-attentions, " if
             self_attention(maps) else "") + "entropy per head")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from attndsl.hf import import_hf
    spec = import_hf(args.directory, args.output)
    print(f"wrote {spec} and {spec.parent / 'model.safetensors'}")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from attndsl.hf import export_hf
    from attndsl.training.checkpoint import model_from_source
    model, _ = model_from_source(args.source, "numpy", config_of(args), weights=args.weights)
    out = export_hf(model, args.output)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from attndsl.onnx_export import export_onnx
    from attndsl.training.checkpoint import model_from_source
    check_output_file(args.onnx)
    model, _ = model_from_source(args.source, "numpy", config_of(args), weights=args.weights)
    report = export_onnx(model, args.onnx)
    axes = "; ".join(f"{n}[{', '.join(a)}]" for n, a in report.dynamic.items())
    print(f"wrote {report.path}: inputs {', '.join(report.inputs)} -> outputs "
          f"{', '.join(report.outputs)}; dynamic axes {axes}")
    print(f"checked: onnx.checker passed; onnxruntime vs NumPy backend at "
          f"{report.checked_shapes}: max relative difference {report.max_error:.1e}")
    return 0


# -- parser ----------------------------------------------------------------------------------

def number(kind: type, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: an int or finite float within [low, high] (open where asked)."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    want = {int: "an integer", float: "a number"}[kind] + (f" in {lo}, {hi}" if lo and hi else
                                                           f" > {low}" if lo and low_open else
                                                           f" >= {low}" if lo else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or (
                low is not None and (value < low or (low_open and value == low))) or (
                high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return value
    return parse


positive_int = number(int, 0, low_open=True)
count = number(int, 0)                               # 0 allowed: "none" / "never"
probability = number(float, 0.0, 1.0, high_open=True)


def device_name(text: str) -> str:
    """'cpu', 'cuda', 'cuda:N', 'mps': checked by name here, for availability by the trainer."""
    head, _, index = text.partition(":")
    if head not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def add_opt_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("-O", dest="opt_level", type=int, choices=(0, 1, 2), default=2,
                   help="0: the graph as written; 1: CSE, attention fusion, DCE; "
                   "2 (default): also one GEMM for projections of the same input")


def add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", default="auto", choices=("auto", "dense", "tiled", "sparse"),
                   help="attention implementation (auto: the cost model picks per call)")


def add_source(p: argparse.ArgumentParser) -> None:
    """A spec or a run directory, and --weights for a spec."""
    p.add_argument("source", type=Path, help="an .attn file or a run directory")
    p.add_argument("--weights", help="with a spec: a safetensors file to load (default: "
                   "seeded random weights)")


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="override a spec constant (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attndsl", description="Compile and run .attn specs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="parse and type/shape-check a spec")
    p.add_argument("spec", type=Path, help="an .attn file")
    add_set(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("compile", help="print the AST, IR, DOT or generated backend source")
    p.add_argument("spec", type=Path, help="an .attn file")
    p.add_argument("--emit", choices=("ast", "graph", "dot", "numpy", "torch", "cupy"),
                   default="graph")
    p.add_argument("--spans", action="store_true", help="with --emit graph: source locations")
    p.add_argument("--grad", action="store_true",
                   help="with --emit numpy or graph: the forward and backward program of the "
                        "spec's training loss (reverse mode, as NumPy training runs it)")
    p.add_argument("--no-opt", action="store_true", help="the same as -O0")
    add_opt_level(p)
    p.add_argument("--explain", action="store_true",
                   help="say which attention implementation was chosen and why (on stderr)")
    p.add_argument("--backend", choices=("numpy", "torch", "cupy"),
                   help="with --explain: the backend to explain for (default: --emit's)")
    p.add_argument("--batch", type=positive_int, help="with --explain: batch size for costs")
    p.add_argument("--seq", type=positive_int, help="with --explain: sequence length for costs")
    add_attention(p)
    add_set(p)
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("stats", help="parameters, FLOPs and activation memory")
    p.add_argument("spec", type=Path, help="an .attn file")
    p.add_argument("--batch", type=positive_int)
    p.add_argument("--seq", type=positive_int)
    p.add_argument("--backend", default="numpy", choices=("numpy", "torch", "cupy"),
                   help="whose kernels the memory estimate follows")
    p.add_argument("--measure", action="store_true",
                   help="also run one forward with random weights and print its measured peak")
    add_set(p)
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("run", help="run a spec on given or random inputs")
    p.add_argument("spec", type=Path, help="an .attn file")
    p.add_argument("--backend", default="numpy", choices=("numpy", "torch", "cupy"))
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--random", action="store_true", help="random inputs (the default)")
    p.add_argument("--batch", type=positive_int)
    p.add_argument("--seq", type=positive_int)
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--weights", help="a safetensors file to load")
    add_quantize(p)
    p.add_argument("-o", "--output", help="write outputs to this .npz")
    p.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                   help="refuse to run if weights + peak activations exceed this (e.g. 8GB; "
                   "default: the memory available now)")
    add_opt_level(p)
    p.add_argument("--outputs", metavar="NAME[,NAME...]",
                   help="only these outputs (attention weights= maps are returned only here)")
    add_attention(p)
    add_set(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("init", help="write initialized weights")
    p.add_argument("spec", type=Path, help="an .attn file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                   help="refuse if the weights exceed this (default: the memory available)")
    add_set(p)
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("train", help="train a spec on a text file")
    p.add_argument("spec", type=Path, help="an .attn file")
    p.add_argument("--data", help="a UTF-8 text file (default: the bundled Shakespeare "
                   "sample); .tsv/.jsonl source-target pairs for encoder-decoder specs; .npz "
                   "arrays named like the inputs plus 'targets'")
    p.add_argument("--backend", default="torch", choices=("torch", "numpy"),
                   help="torch (fused optimizers, autograd) or numpy (the compiler's reverse mode)")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--batch", type=positive_int,
                   help="default: the resumed run's, else the spec's, else 12")
    p.add_argument("--seq", type=positive_int,
                   help="default: the resumed run's, else the spec's, else 64")
    p.add_argument("--lr", type=number(float, 0.0, low_open=True),
                   help="peak learning rate (default: the spec's)")
    p.add_argument("--schedule", choices=("constant", "cosine", "linear", "noam",
                                          "cosine_restarts", "exponential"),
                   help="learning-rate schedule (default: the spec's train section)")
    p.add_argument("--warmup", type=count, help="warm-up steps of the schedule")
    p.add_argument("--tokenizer", default="char", choices=("char", "byte", "bpe"))
    p.add_argument("--vocab-size", type=positive_int, default=512,
                   help="BPE vocabulary size")
    p.add_argument("--eval-every", type=count, default=100, help="0: never")
    p.add_argument("--eval-iters", type=positive_int, default=20)
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--clip", type=number(float, 0.0, low_open=True),
                   help="gradient clipping norm (default: the spec's)")
    p.add_argument("--dropout", type=probability, help="override every dropout probability")
    p.add_argument("--layerdrop", type=probability, default=None, help="LayerDrop probability")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing for every repeat iteration")
    p.add_argument("--memory-budget", type=parse_size, metavar="SIZE",
                   help="torch: checkpoint as few repeat iterations as make the predicted "
                   "peak of a training step fit (e.g. 2GB), or stop naming the smallest "
                   "budget that fits")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel ranks on this machine (torchrun + DDP; gloo on CPU, "
                   "NCCL on GPUs); the global batch is nproc x --batch")
    p.add_argument("--shard", action="store_true",
                   help="with --nproc N or torchrun: FSDP instead of DDP, parameters, "
                   "gradients and optimizer state sharded over the ranks")
    p.add_argument("--seed", type=count, default=1337)
    p.add_argument("--out", default="runs/latest", help="checkpoint directory")
    p.add_argument("--resume", help="continue from this checkpoint directory")
    p.add_argument("--save-every", type=count, default=0, help="also checkpoint every N steps")
    p.add_argument("--sample", type=count, default=200,
                   help="characters of sample text to print at the end (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_set(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("generate", help="generate text from a checkpoint or a spec")
    p.add_argument("source", help="a checkpoint directory written by `attndsl train`, or a "
                   "spec (byte tokenizer; with --weights, else seeded random weights)")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new", type=count, default=200)
    p.add_argument("--temperature", type=number(float, 0.0), default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=number(float, 0.0, 1.0, low_open=True))
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--backend", default="torch", choices=("torch", "numpy"))
    p.add_argument("--weights", help="with a spec: a safetensors file to load")
    add_quantize(p)
    p.add_argument("--beam", type=positive_int, default=1,
                   help="encoder-decoder specs: beam width (1 = greedy)")
    p.add_argument("--bos", type=count, help="encoder-decoder: start token id (default: a "
                   "paired-data run's BOS, else 1)")
    p.add_argument("--eos", type=count, help="encoder-decoder: end token id (default: a "
                   "paired-data run's EOS, else 2)")
    add_set(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("export", help="export a spec or run directory to ONNX (checked in "
                       "onnxruntime against the NumPy backend)")
    add_source(p)
    p.add_argument("--onnx", required=True, metavar="FILE.onnx", help="the file to write")
    add_set(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("inspect", help="attention heatmaps, rollout and per-head entropy "
                       "for a text (PNG)")
    add_source(p)
    p.add_argument("--text", required=True, help="the input (tokenized as the run was; a "
                   "spec uses bytes)")
    p.add_argument("--layer", help="which attention to draw, e.g. attention.3 (default: the "
                   "first)")
    p.add_argument("--head", type=count, help="one head (default: all)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "torch"))
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    add_set(p)
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("import-hf", help="convert a local Hugging Face model directory "
                       "(BERT, RoBERTa, GPT-2, LLaMA/Mistral) into a spec and safetensors")
    p.add_argument("directory", type=Path, help="holds config.json and model.safetensors "
                   "(or a sharded model.safetensors.index.json)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="directory for model.attn and model.safetensors")
    p.set_defaults(fn=cmd_import_hf)

    p = sub.add_parser("export-hf", help="write a Hugging Face directory (config.json + "
                       "model.safetensors) for a spec written by import-hf")
    add_source(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    add_set(p)
    p.set_defaults(fn=cmd_export_hf)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # --nproc relaunches it
    handler: Callable[[argparse.Namespace], int] = args.fn
    try:
        return handler(args)
    except AttnError as e:
        print(e.format(), file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:                          # disk full, read-only, permissions
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}",
              file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory (try a smaller --batch/--seq or fewer layers)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)          # 130 for Ctrl-C, 143 for SIGTERM
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

