"""Text generation: sampling with a KV cache (temperature, top-k, top-p) for decoder-only
specs, and greedy / beam search for encoder–decoder specs.

Incremental decoding runs the program's `forward_cached` where the compiler proves it exact
(`attndsl.passes.cache_safety`): each step feeds only the new tokens, self-attention appends
their keys/values to the cache, and position tables start at the number of tokens already
decoded — the logits equal the full forward's. Anything else recomputes the full window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from attndsl.backends.codegen import decode_symbol
from attndsl.errors import TrainingError
from attndsl.model import Model
from attndsl.passes.cache_safety import cache_safety
from attndsl.training.losses import loss_spec


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def filter_logits(logits: np.ndarray, temperature: float, top_k: int | None,
                  top_p: float | None) -> np.ndarray:
    """Probabilities (V,) after temperature, top-k and nucleus (top-p) filtering."""
    logits = logits.astype(np.float64) / max(temperature, 1e-8)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = _softmax(logits)
    if top_p is not None and 0.0 < top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        cut = order[np.searchsorted(cum, top_p) + 1:]   # keep the smallest set with mass >= p
        probs[cut] = 0.0
        probs /= probs.sum()
    return probs


class Decoder:
    """Incremental decoding of a model, one step of new token ids at a time.

    Uses the cached program (`forward_cached`: only the new positions are computed, self-
    attention keys/values are cached) when `attndsl.passes.cache_safety` proves it gives the
    full forward's numbers; otherwise every step recomputes the whole window with the plain
    forward, and a notice naming the reason is printed once per model (never wrong numbers).
    `cached` says which; `verdict` says why. A model with recurrent `state` carries its
    memory instead (`memory`), in segments of the train section's `seq` (default 1)."""

    def __init__(self, model: Model):
        self.model = model
        self.output = loss_spec(model.graph)["output"]
        self.input = next(iter(model.graph.inputs))
        bounds = model.graph.meta.get("dim_bounds", {})
        self.max_len = min(bounds.values()) if bounds else None
        self.states: list[str] = list(model.graph.meta.get("states", []))
        self.memory: dict[str, Any] = {}
        if self.states:
            # recurrent memory: tokens gather into segments of the spec's `seq` (default 1);
            # a full segment moves the memory on, a partial one is only read (by a copy of
            # the model that computes the logits alone, so a memory update that needs whole
            # segments, like compression, never sees a partial one)
            self.verdict, self.cached = cache_safety(model.graph, None, self.output), False
            self.cache, self.history, self.past = {}, None, 0
            self.segment = int(model.graph.meta.get("train", {}).get("seq", 1))
            self.pending: list[int] = []
            self.peek: Model | None = None
            return
        self.verdict = cache_safety(model.graph, decode_symbol(model.graph), self.output)
        self.cached = self.verdict.safe
        if not self.cached and not getattr(model, "_decode_notice_shown", False):
            print(f"generate: cached decoding is not provably correct for this spec "
                  f"({self.verdict.describe()}); recomputing the full window each step",
                  file=sys.stderr)
            model._decode_notice_shown = True  # type: ignore[attr-defined]
        self.cache: dict[Any, Any] = {}
        self.history: np.ndarray | None = None
        self.past = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed new token ids (1, n); returns the logits of the last position (V,)."""
        ids = np.asarray(ids, dtype=np.int64)
        model = self.model
        if self.states:
            return self._segment_step(ids)
        if not self.cached:
            self.history = ids if self.history is None else np.concatenate(
                [self.history, ids], axis=1)
            window = self.history[:, -self.max_len:] if self.max_len else self.history
            out = model(**{self.input: window})
        else:
            xs = model.validate_inputs({self.input: ids})
            if model.backend.name == "torch":
                import torch
                with torch.no_grad():
                    out = model.module.forward_cached(self.cache, self.past,
                                                      **model.program.convert_inputs(xs))
            else:
                out = model.program.run_cached(xs, self.cache, self.past)
        self.past += ids.shape[1]
        return model.program.to_numpy(out[self.output])[0, -1]

    def _segment_step(self, ids: np.ndarray) -> np.ndarray:
        model = self.model
        self.pending += [int(i) for i in ids[0]]
        self.past += ids.shape[1]
        logits = None
        while len(self.pending) >= self.segment:
            seg, self.pending = self.pending[:self.segment], self.pending[self.segment:]
            out = model.to_numpy(model(**{self.input: np.array([seg])}, **self.memory))
            self.memory = {n: out[n] for n in self.states}
            logits = out[self.output][0, -1]
        if not self.pending:
            return logits
        if self.peek is None:                     # built and loaded once per decoder
            import attndsl
            self.peek = attndsl.compile(model.graph, backend=model.backend.name,
                                        dtype=model.dtype, outputs=[self.output])
            self.peek.load_state_dict({n: w for n, w in model.state_dict().items()
                                       if n in self.peek.graph.params})
        out = self.peek.to_numpy(self.peek(**{self.input: np.array([self.pending])},
                                           **self.memory))
        return out[self.output][0, -1]

    def reset(self) -> None:
        self.cache, self.history, self.past, self.memory = {}, None, 0, {}
        if self.states:
            self.pending = []


def generate_ids(model: Model, prompt: list[int], max_new: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0
                 ) -> list[int]:
    """Sample `max_new` tokens after `prompt`; temperature 0 means greedy. When the model's
    maximum length is reached, the cache is rebuilt from the most recent tokens (a model
    with recurrent `state` feeds each token as a segment and carries its memory instead)."""
    rng = np.random.default_rng(seed)
    dec = Decoder(model)
    ids = list(prompt)
    logits = dec.step(np.array([ids[-dec.max_len:] if dec.max_len else ids]))
    for _ in range(max_new):
        if temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            nxt = int(rng.choice(len(logits), p=filter_logits(logits, temperature, top_k, top_p)))
        ids.append(nxt)
        if dec.max_len and dec.past >= dec.max_len and not dec.states:
            dec.reset()
            logits = dec.step(np.array([ids[-(dec.max_len // 2):]]))
        else:
            logits = dec.step(np.array([[nxt]]))
    return ids


def sample_text(model: Model, tokenizer: Any, prompt: str, max_new: int, temperature: float,
                top_k: int | None, top_p: float | None, seed: int) -> str:
    ids = generate_ids(model, tokenizer.encode(prompt), max_new, temperature, top_k, top_p, seed)
    return tokenizer.decode(ids)


def seq2seq_logits(model: Model, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Full forward of an encoder–decoder spec; logits of the last target position (N, V)."""
    names = list(model.graph.inputs)
    out = model.to_numpy(model(**{names[0]: src, names[1]: tgt}))
    return out[loss_spec(model.graph)["output"]][:, -1]


def greedy_decode(model: Model, src: np.ndarray, bos: int, eos: int, max_len: int) -> list[int]:
    """Greedy decoding for an encoder–decoder spec (inputs: source, target)."""
    tgt = [bos]
    for _ in range(max_len):
        nxt = int(np.argmax(seq2seq_logits(model, src, np.array([tgt]))[0]))
        tgt.append(nxt)
        if nxt == eos:
            break
    return tgt


def beam_search(model: Model, src: np.ndarray, bos: int, eos: int, max_len: int,
                beam: int = 4, length_penalty: float = 0.6) -> list[int]:
    """Beam search with the GNMT length penalty ((5 + len) / 6) ** alpha."""
    beams: list[tuple[float, list[int]]] = [(0.0, [bos])]
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        live = [b for b in beams if b[1][-1] != eos]
        if not live:
            break
        tgt = np.array([seq for _, seq in live])
        logits = seq2seq_logits(model, np.repeat(src, len(live), axis=0), tgt)
        logp = np.log(np.maximum(_softmax(logits.astype(np.float64)), 1e-300))  # (N, V)
        cand = [(score + logp[i, v], seq + [int(v)]) for i, (score, seq) in enumerate(live)
                for v in np.argsort(-logp[i])[:beam]]
        cand.sort(key=lambda c: -c[0])
        beams = cand[:beam]
        finished += [c for c in beams if c[1][-1] == eos]
    pool = finished or beams

    def penalized(c: tuple[float, list[int]]) -> float:
        return c[0] / (((5 + len(c[1])) / 6) ** length_penalty)

    return max(pool, key=penalized)[1]


def generate_from_cli(args: argparse.Namespace) -> int:
    """`attndsl generate DIR|SPEC`: a checkpoint directory brings its spec, weights and
    tokenizer; a spec file runs with `--weights` (or seeded random weights) and the byte
    tokenizer. Encoder–decoder specs (two token inputs) decode the prompt as the source
    sequence, greedily or with `--beam N`."""
    from attndsl.cli import parse_sets
    from attndsl.training.checkpoint import model_from_source
    from attndsl.training.tokenizers import tokenizer_of
    model, state = model_from_source(Path(args.source), args.backend, parse_sets(args.set),
                                     args.seed, args.weights, args.quantize)
    if args.quantize:
        print(model.quantize_report, file=sys.stderr)
    tokenizer = tokenizer_of(state)
    optional = model.graph.meta.get("input_defaults", {})   # e.g. an attention mask
    inputs = {n: nid for n, nid in model.graph.inputs.items() if n not in optional}
    if len(inputs) not in (1, 2) or any(model.graph.nodes[nid].type.dtype != "int"
                                        for nid in inputs.values()):
        raise TrainingError("generate needs a decoder-only spec (one token input) or an "
                            f"encoder-decoder spec (source and target tokens); this one takes "
                            f"{', '.join(inputs)}")
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise TrainingError("the prompt is empty (or has no character the tokenizer knows)",
                            None, "give at least one token, e.g. --prompt 'The '")
    if len(inputs) == 1 and args.beam > 1:
        raise TrainingError("--beam is for encoder-decoder specs; this spec is decoder-only",
                            None, "sample with --temperature/--top-k/--top-p, or greedy with "
                            "--temperature 0")
    if len(inputs) == 2:
        src = np.array([prompt])
        specials = (state or {}).get("specials", {})      # a run trained on paired data
        bos = args.bos if args.bos is not None else specials.get("bos", 1)
        eos = args.eos if args.eos is not None else specials.get("eos", 2)
        if args.beam > 1:
            ids = beam_search(model, src, bos, eos, args.max_new, beam=args.beam)
        else:
            ids = greedy_decode(model, src, bos, eos, args.max_new)
        ids = [i for i in ids[1:] if i != eos]
    else:
        ids = generate_ids(model, prompt, args.max_new, args.temperature, args.top_k,
                           args.top_p, args.seed)
    if max(ids, default=0) >= tokenizer.vocab_size:  # a spec's vocabulary beyond bytes
        print("token ids:", " ".join(map(str, ids)))
    else:
        print(tokenizer.decode(ids))
    return 0
