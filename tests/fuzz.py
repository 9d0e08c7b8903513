"""A seeded, grammar-aware fuzzer for the front end.

    python -m tests.fuzz --n 100000 [--seed 0] [--timeout 10] [--memory-mb 2048] [--show 5]

Mutates the specs in `specs/` and the `attn` examples in the docs (token deletion,
duplication and swaps, extreme numbers, unicode and invisible characters, deep nesting,
long lines, binary junk, a BOM, CRLF / lone-CR / form-feed newlines, tabs, repeat and
constant bombs), builds each case with `attndsl.build`, and sorts the outcome:

- accepted: the spec built;
- located: an `AttnError` whose location lies inside the text and whose quoted line is
  the one at that location;
- misplaced: an `AttnError` located outside the text, or quoting another line;
- traceback: any other exception;
- hang: no answer within --timeout seconds, or the case exhausted --memory-mb.

Cases run in a worker process under an address-space limit; a case that kills or stalls
the worker is recorded and the worker restarted. Exit status 1 if any case is a
traceback, misplaced or a hang.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import re
import resource
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAD = ("traceback", "misplaced", "hang")
TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?(?:e[+-]?\d+)?|\"[^\"\n]*\"|\*\*|//|<=|\s+|\S")
EXTREME = ["0", "-1", "1e400", "1e-400", "99999999999999999999", "2**64", "10**300", "0.0",
           "-0", "7" * 1200, "4096", "3.5", "nan", "inf"]
UNICODE = ["é", "中", "\u2028", "\u2029", "\u200b", "\x0c", "\x0b", "\x85", "🙂", "\ufeff",
           "\t", "\r", "\x1b[31m", "\\", "'", '"']


def corpus() -> list[str]:
    """The specs (layer counts shrunk so a case builds in milliseconds) and doc examples."""
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "specs").glob("*.attn"))]
    for doc in (ROOT / "docs" / "language.md", ROOT / "README.md"):
        texts += re.findall(r"```attn\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    return [re.sub(r"(const \w*(?:layers|ctx|vocab)\w* = )\d+", r"\g<1>2", t) for t in texts]


def mutate(text: str, rng: random.Random) -> str:
    """One to four mutations of `text`."""
    for _ in range(rng.randint(1, 4)):
        tokens = TOKEN.findall(text) or [""]
        i = rng.randrange(len(tokens))
        kind = rng.choice(["delete", "duplicate", "swap", "number", "unicode", "nest", "long",
                           "junk", "bom", "newlines", "tabs", "bomb", "truncate", "token"])
        if kind == "delete":
            del tokens[i:i + rng.randint(1, 5)]
        elif kind == "duplicate":
            tokens[i:i] = tokens[i:i + rng.randint(1, 8)] * rng.randint(1, 3)
        elif kind == "swap":
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "number":
            spots = [k for k, t in enumerate(tokens) if t[:1].isdigit()] or [i]
            tokens[rng.choice(spots)] = rng.choice(EXTREME)
        elif kind == "unicode":
            tokens.insert(i, rng.choice(UNICODE))
        elif kind == "nest":
            depth = rng.choice([10, 150, 250, 5000])
            tokens.insert(i, "(" * depth + "1" + ")" * depth)
        elif kind == "long":
            tokens.insert(i, " ".join([rng.choice(tokens)] * rng.choice([100, 10_000])))
        elif kind == "junk":
            tokens.insert(i, bytes(rng.randrange(256) for _ in range(16)).decode("latin-1"))
        elif kind == "bom":
            tokens.insert(0, "\ufeff")
        elif kind == "newlines":
            return "".join(tokens).replace("\n", rng.choice(["\r\n", "\r", "\x0c", "\u2028"]))
        elif kind == "tabs":
            tokens = [t.replace("    ", "\t") for t in tokens]
        elif kind == "bomb":
            tokens.insert(i, rng.choice([
                "repeat 1000 { repeat 1000 { repeat 1000 { x = x } } }\n",
                "".join(f"const c{k} = c{k - 1} * c{k - 1}\n" for k in range(1, 40)),
                "block b0(x) { return x }\n" + "".join(
                    f"block b{k}(x) {{ return b{k - 1}(b{k - 1}(x)) }}\n" for k in range(1, 40)),
            ]))
        elif kind == "truncate":
            tokens = tokens[:i]
        else:
            tokens.insert(i, rng.choice(["repeat", "import", "model", "block", "const", "@",
                                         "=", "{", "}", "[", "]", "(", ")", ",", ":", "..."]))
        text = "".join(tokens)
    return text


def classify(text: str) -> tuple[str, str]:
    """(outcome, detail) of building one case."""
    import attndsl
    from attndsl.errors import AttnError
    try:
        attndsl.build(text)
    except AttnError as e:
        try:
            rendered = e.format()
        except Exception as inner:  # noqa: BLE001 - rendering must not fail either
            return "traceback", f"format(): {type(inner).__name__}: {inner}"
        span = e.span
        if span is None or not span.source:
            return "located", e.code
        lines = span.source.split("\n")
        if not 1 <= span.line <= len(lines) or not 1 <= span.col <= len(lines[span.line - 1]) + 2:
            return "misplaced", f"{e.code} at {span.line}:{span.col}: {e.message}"
        quoted = f" {span.line} | "
        if quoted not in rendered:
            return "misplaced", f"{e.code} quotes no line: {e.message}"
        return "located", e.code
    except RecursionError as e:
        return "traceback", f"RecursionError: {e}"
    except Exception as e:  # noqa: BLE001 - any other exception is a finding
        return "traceback", f"{type(e).__name__}: {e}"
    return "accepted", ""


def _worker(tasks: mp.Queue, results: mp.Queue, memory_mb: int) -> None:
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while (item := tasks.get()) is not None:
        index, text = item
        try:
            outcome = classify(text)
        except MemoryError:
            outcome = ("hang", "MemoryError (over the memory limit)")
        results.put((index, *outcome))


def run(n: int, seed: int, timeout: float, memory_mb: int) -> tuple[Counter, list]:
    """Fuzz `n` cases; (outcome counts, [(index, outcome, detail, text)] of bad ones)."""
    rng = random.Random(seed)
    seeds = corpus()
    cases = [mutate(rng.choice(seeds), rng) for _ in range(n)]
    ctx = mp.get_context("fork")
    counts: Counter = Counter()
    bad: list = []
    index = 0
    while index < n:
        tasks, results = ctx.Queue(), ctx.Queue()
        worker = ctx.Process(target=_worker, args=(tasks, results, memory_mb), daemon=True)
        worker.start()
        while index < n:
            tasks.put((index, cases[index]))
            try:
                _, outcome, detail = results.get(timeout=timeout)
            except Exception:  # noqa: BLE001 - queue.Empty: the case hung or killed the worker
                outcome, detail = "hang", (f"worker died ({worker.exitcode})"
                                           if not worker.is_alive() else f"> {timeout} s")
            counts[outcome] += 1
            if outcome in BAD:
                bad.append((index, outcome, detail, cases[index]))
            index += 1
            if outcome == "hang":
                worker.kill()
                break
        else:
            tasks.put(None)
            worker.join(timeout)
    return counts, bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--memory-mb", type=int, default=2048, help="address space per worker")
    ap.add_argument("--show", type=int, default=5, help="bad cases to print")
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    counts, bad = run(args.n, args.seed, args.timeout, args.memory_mb)
    if args.json:
        print(json.dumps({"counts": dict(counts), "bad": [b[:3] for b in bad]}))
    else:
        print(f"{args.n} cases, seed {args.seed}, {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for index, outcome, detail, text in bad[:args.show]:
            print(f"--- case {index}: {outcome}: {detail}\n{text[:2000]!r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
