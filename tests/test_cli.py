"""The `attndsl` command line, called in-process through `attndsl.cli.main` (plus one
subprocess run of the module entry point)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_CONFIGS, set_args
from tolerances import TOLERANCES

import attndsl
from attndsl.cli import main

GPT_TINY = TINY_CONFIGS["gpt"]
GPT_SMALL_PARAMS = "124,439,808"   # GPT-2 small with the tied unembedding


@pytest.fixture(scope="module")
def gpt_spec(repo_root: Path) -> str:
    return str(repo_root / "specs" / "gpt.attn")


@pytest.fixture(scope="module")
def tiny_args() -> list[str]:
    return set_args(GPT_TINY)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# -- check / compile / stats -------------------------------------------------------------------------

def test_check(capsys, gpt_spec, tiny_args) -> None:
    code, out, _ = run_cli(capsys, "check", gpt_spec, *tiny_args)
    assert code == 0
    assert "ok" in out and "21,280 parameters" in out
    assert "tokens: int[B, T]" in out and "logits: float[B, T, 97]" in out


def test_check_every_spec(capsys, spec_path: Path) -> None:
    code, out, err = run_cli(capsys, "check", spec_path)
    assert code == 0, err
    assert "ok" in out


@pytest.mark.parametrize("emit", ["ast", "graph", "dot", "numpy", "torch"])
def test_compile_emit(capsys, gpt_spec, tiny_args, emit: str) -> None:
    if emit == "torch":
        pytest.importorskip("torch")
    code, out, err = run_cli(capsys, "compile", gpt_spec, "--emit", emit, *tiny_args)
    assert code == 0, err
    expected = {
        "ast": ["Module", "Const", "vocab"],
        "graph": ["input()", "embedding(", "attention(", "float[B, T, 97]"],
        "dot": ["digraph", "->", "}"],
        "numpy": ["import numpy as np", "def op_attention(", "def forward(p, inputs"],
        "torch": ["import torch", "class GeneratedModel(nn.Module)",
                  "'wte.weight': ((97, 32), 'float')"],
    }[emit]
    for fragment in expected:
        assert fragment in out, f"--emit {emit} lacks {fragment!r}"


@pytest.mark.parametrize("emit", ["numpy", "torch"])
def test_emitted_source_compiles(capsys, gpt_spec, tiny_args, emit: str) -> None:
    if emit == "torch":
        pytest.importorskip("torch")
    _, out, _ = run_cli(capsys, "compile", gpt_spec, "--emit", emit, *tiny_args)
    compile(out, f"<emit {emit}>", "exec")


def test_compile_graph_with_spans_and_no_opt(capsys, gpt_spec, tiny_args) -> None:
    code, out, _ = run_cli(capsys, "compile", gpt_spec, "--emit", "graph", "--spans", "--no-opt",
                           *tiny_args)
    assert code == 0
    assert "gpt.attn:" in out


def test_stats_full_size_parameter_count(capsys, gpt_spec) -> None:
    code, out, _ = run_cli(capsys, "stats", gpt_spec)
    assert code == 0
    assert f"parameters: {GPT_SMALL_PARAMS}" in out


def test_stats_with_batch_and_seq(capsys, gpt_spec, tiny_args) -> None:
    code, out, _ = run_cli(capsys, "stats", gpt_spec, "--batch", "2", "--seq", "16", *tiny_args)
    assert code == 0
    assert "parameters: 21,280" in out
    flops = re.search(r"forward FLOPs \(B=2, T=16\): ([\d,]+)", out)
    assert flops, out
    model = attndsl.compile(gpt_spec, config=GPT_TINY)
    expected = model.stats.evaluate({"B": 2, "T": 16})["flops"]
    assert int(flops.group(1).replace(",", "")) == expected
    assert "activation memory (B=2, T=16, numpy, float32): planned peak" in out
    assert "one training step (adamw, float32;" in out


def test_seq_above_the_spec_bound_is_said(capsys, gpt_spec, tiny_args) -> None:
    """--seq past `T <= ctx` uses the bound, and says so (stats, --explain, run --random)."""
    code, out, err = run_cli(capsys, "stats", gpt_spec, "--seq", "4096", *tiny_args)
    ctx = GPT_TINY["ctx"]
    assert code == 0 and f"T={ctx})" in out
    assert f"note: --seq 4096 is above the spec's bound T <= {ctx}: using T={ctx}" in err
    code, _, err = run_cli(capsys, "compile", gpt_spec, "--explain", "--seq", "4096", *tiny_args)
    assert code == 0 and f"using T={ctx}" in err and f"T={ctx}:" in err


def test_stats_measure(capsys, gpt_spec, tiny_args) -> None:
    """--measure runs one forward and prints its peak next to the plan's (their agreement
    at real sizes: tests/test_memory_plan.py)."""
    code, out, _ = run_cli(capsys, "stats", gpt_spec, "--batch", "1", "--seq", "32", "--measure",
                           *tiny_args)
    assert code == 0
    assert re.search(r"measured peak of one forward \(B=1, T=32, numpy, random weights\): "
                     r"[\d.]+ KiB \(tracemalloc\)", out), out


# -- run / init ------------------------------------------------------------------------------------

def test_run_random(capsys, gpt_spec, tiny_args) -> None:
    code, out, _ = run_cli(capsys, "run", gpt_spec, "--random", "--batch", "2", "--seq", "8",
                           *tiny_args)
    assert code == 0
    assert "logits: float32[2, 8, 97]" in out
    assert "non-finite" not in out


def test_run_output_round_trip(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    out_file = tmp_path / "out.npz"
    code, out, _ = run_cli(capsys, "run", gpt_spec, "--random", "--batch", "2", "--seq", "8",
                           "-o", out_file, *tiny_args)
    assert code == 0 and f"wrote {out_file}" in out
    with np.load(out_file) as saved:
        assert "logits" in saved.files
        first = saved["logits"]
    assert first.shape == (2, 8, 97) and np.isfinite(first).all()
    run_cli(capsys, "run", gpt_spec, "--random", "--batch", "2", "--seq", "8", "-o", out_file,
            *tiny_args)
    with np.load(out_file) as saved:
        np.testing.assert_array_equal(saved["logits"], first)   # deterministic


def test_run_with_input_file(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    ids = np.random.default_rng(4).integers(0, 97, (3, 11))
    np.save(tmp_path / "tokens.npy", ids)
    out_file = tmp_path / "out.npz"
    code, _, err = run_cli(capsys, "run", gpt_spec, "--input", f"tokens={tmp_path / 'tokens.npy'}",
                           "-o", out_file, *tiny_args)
    assert code == 0, err
    expected = attndsl.compile(gpt_spec, config=GPT_TINY, seed=0)(tokens=ids)["logits"]
    with np.load(out_file) as saved:
        np.testing.assert_allclose(saved["logits"], expected, **TOLERANCES["float32"])


def test_run_torch_backend(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    pytest.importorskip("torch")
    out_file = tmp_path / "out.npz"
    code, out, _ = run_cli(capsys, "run", gpt_spec, "--backend", "torch", "--seq", "8", "-o",
                           out_file, *tiny_args)
    assert code == 0 and "logits: float32[1, 8, 97]" in out
    run_cli(capsys, "run", gpt_spec, "--seq", "8", "-o", tmp_path / "np.npz", *tiny_args)
    with np.load(out_file) as a, np.load(tmp_path / "np.npz") as b:
        np.testing.assert_allclose(a["logits"], b["logits"], **TOLERANCES["float32"])


def test_init_then_run_with_weights(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    weights = tmp_path / "w.safetensors"
    code, out, _ = run_cli(capsys, "init", gpt_spec, "-o", weights, "--seed", "5", *tiny_args)
    assert code == 0 and "21,280 parameters" in out and weights.is_file()
    ids = np.random.default_rng(0).integers(0, 97, (1, 6))
    np.save(tmp_path / "ids.npy", ids)
    out_file = tmp_path / "out.npz"
    code, _, err = run_cli(capsys, "run", gpt_spec, "--weights", weights, "--input",
                           f"tokens={tmp_path / 'ids.npy'}", "-o", out_file, *tiny_args)
    assert code == 0, err
    seeded5 = attndsl.compile(gpt_spec, config=GPT_TINY, seed=5)(tokens=ids)["logits"]
    seeded0 = attndsl.compile(gpt_spec, config=GPT_TINY, seed=0)(tokens=ids)["logits"]
    with np.load(out_file) as saved:
        np.testing.assert_allclose(saved["logits"], seeded5, **TOLERANCES["float32"])
        assert not np.allclose(saved["logits"], seeded0)


def test_emitted_numpy_program_is_standalone(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    code, source, _ = run_cli(capsys, "compile", gpt_spec, "--emit", "numpy", *tiny_args)
    assert code == 0
    assert "attndsl" not in "\n".join(line for line in source.splitlines()
                                      if line.startswith(("import", "from")))
    path = tmp_path / "gpt_program.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("gpt_program", path)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    model = attndsl.compile(gpt_spec, config=GPT_TINY, seed=0)
    ids = np.random.default_rng(1).integers(0, 97, (2, 9))
    out = program.forward(model.state_dict(), {"tokens": ids})
    expected = model(tokens=ids)
    assert set(out) == set(expected) and "logits" in out
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name], err_msg=name,
                                   **TOLERANCES["float32"])


def test_module_entry_point(repo_root: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "attndsl.cli", "check", "specs/gpt.attn"],
                            cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "specs/gpt.attn: ok" in result.stdout


# -- errors ------------------------------------------------------------------------------------------

BAD_SPEC = """model m {
    input x: float[B, 4]
    y = linear(x 3)
    output y
}
"""


def test_syntax_error(capsys, tmp_path) -> None:
    path = tmp_path / "bad.attn"
    path.write_text(BAD_SPEC)
    code, out, err = run_cli(capsys, "check", path)
    assert code == 2
    line, col = 3, BAD_SPEC.splitlines()[2].index("3") + 1
    assert f"{path}:{line}:{col}: error[E100]" in err
    assert "linear(x 3)" in err
    caret_line = next(ln for ln in err.splitlines() if ln.strip().endswith("^"))
    source_line = next(ln for ln in err.splitlines() if "linear(x 3)" in ln)
    assert source_line.rindex("3") == caret_line.index("^"), "the caret points at the token"
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("command", ["check", "compile", "stats", "run"])
def test_syntax_error_every_command(capsys, tmp_path, command: str) -> None:
    path = tmp_path / "bad.attn"
    path.write_text(BAD_SPEC)
    code, _, err = run_cli(capsys, command, path)
    assert code == 2 and "error[E100]" in err


def test_unknown_set_key_suggests_the_constant(capsys, gpt_spec) -> None:
    code, _, err = run_cli(capsys, "check", gpt_spec, "--set", "layres=2")
    assert code == 2
    assert "layres" in err and "did you mean 'layers'" in err


def test_malformed_set(capsys, gpt_spec) -> None:
    code, _, err = run_cli(capsys, "check", gpt_spec, "--set", "layers")
    assert code == 2 and "name=value" in err


def test_missing_file(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "check", tmp_path / "nope.attn")
    assert code == 2
    assert "nope.attn" in err and "error[" in err


def test_run_with_wrong_input_dtype(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    code, _, err = run_cli(capsys, "run", gpt_spec, "--input", f"tokens={tmp_path / 'x.npy'}",
                           *tiny_args)
    assert code == 2 and "error[E301]" in err and "must be int" in err


def test_run_with_unreadable_input(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    code, _, err = run_cli(capsys, "run", gpt_spec, "--input", f"tokens={tmp_path / 'none.npy'}",
                           *tiny_args)
    assert code == 2 and "cannot read input 'tokens'" in err


def test_run_with_missing_weights(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    code, _, err = run_cli(capsys, "run", gpt_spec, "--weights", tmp_path / "w.safetensors",
                           *tiny_args)
    assert code == 2 and "error[E302]" in err


def test_unavailable_backend_is_a_clean_error(capsys, gpt_spec, tiny_args) -> None:
    from attndsl.backends import available_backends
    if available_backends()["cupy"] is None:
        pytest.skip("cupy is available here")
    code, _, err = run_cli(capsys, "run", gpt_spec, "--backend", "cupy", *tiny_args)
    assert code == 2 and "not available" in err


def test_emit_cupy_needs_no_gpu(capsys, gpt_spec, tiny_args) -> None:
    """Emitting source is pure: --emit cupy works without CuPy installed."""
    assert main(["compile", gpt_spec, *tiny_args, "--emit", "cupy"]) == 0
    out = capsys.readouterr().out
    assert "import cupy as np" in out and "def forward(p, inputs, o=_NO_OUT):" in out


VARIANT_LM = """
model lm {
    input tokens: int[B, T]
    x = embedding(tokens, 50, 32)
    rel = t5_bias(buckets=8, max_distance=16, bidirectional=false)
    repeat 2 as layers {
        x = x + attention(x, 4, pattern=causal, kv_heads=2, bias=rel + alibi(),
                          rope=rope(theta=500, scaling=llama3(factor=2, original_max_position=8)),
                          weights="map")
        x = x + attention(x, 4, pattern=causal, score=bilinear, bias=relative(max_distance=2))
        x = x + attention(x, 4, pattern=causal, score=additive, kv_heads=1)
    }
    output logits = linear(x, 50)
}
"""


def test_emitted_numpy_program_with_attention_variants_is_standalone(capsys, tmp_path) -> None:
    spec = tmp_path / "lm.attn"
    spec.write_text(VARIANT_LM)
    code, source, _ = run_cli(capsys, "compile", str(spec), "--emit", "numpy")
    assert code == 0
    path = tmp_path / "lm_program.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location("lm_program", path)
    program = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(program)
    model = attndsl.compile(spec, seed=0, outputs=["logits", "layers.0.map", "layers.1.map"])
    ids = np.random.default_rng(1).integers(0, 50, (2, 7))
    out = program.forward(model.state_dict(), {"tokens": ids})
    expected = model(tokens=ids)
    assert set(out) == set(expected) == {"logits", "layers.0.map", "layers.1.map"}
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name], err_msg=name,
                                   **TOLERANCES["float32"])


def test_run_outputs_selects_attention_weights(capsys, tmp_path) -> None:
    spec = tmp_path / "lm.attn"
    spec.write_text(VARIANT_LM)
    code, out, _ = run_cli(capsys, "run", str(spec), "--seq", "6")
    assert code == 0 and "logits:" in out and "map" not in out
    code, out, _ = run_cli(capsys, "run", str(spec), "--seq", "6",
                           "--outputs", "logits,layers.1.map")
    assert code == 0 and "layers.1.map: float32[1, 4, 6, 6]" in out
    code, _, err = run_cli(capsys, "run", str(spec), "--outputs", "nope")
    assert code == 2 and "no output 'nope'" in err and "layers.0.map" in err


def test_emit_torch_does_not_import_torch(repo_root: Path) -> None:
    """Printing the torch module's source needs no torch (it used to take ~2 s to import)."""
    code = ("import sys; from attndsl.cli import main; "
            "rc = main(['compile', 'specs/gpt.attn', '--emit', 'torch', '--set', 'layers=1']); "
            "assert rc == 0 and 'torch' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class GeneratedModel(nn.Module)" in result.stdout


# -- argument validation (issue 9): refused before any work, exit 2, no traceback -------------

@pytest.mark.parametrize("argv, message", [
    (["run", "SPEC", "--seq", "0"], "expected an integer > 0, got 0"),
    (["run", "SPEC", "--batch", "-1"], "expected an integer > 0"),
    (["train", "SPEC", "--grad-accum", "0"], "--grad-accum"),
    (["train", "SPEC", "--layerdrop", "1.5"], "expected a number in [0.0, 1.0)"),
    (["train", "SPEC", "--dropout", "nan"], "--dropout"),
    (["train", "SPEC", "--eval-iters", "0"], "--eval-iters"),
    (["train", "SPEC", "--lr", "-1"], "--lr"),
    (["train", "SPEC", "--device", "nonsense"], "expected cpu, cuda, cuda:N or mps"),
    (["generate", "SPEC", "--max-new", "-1"], "--max-new"),
    (["generate", "SPEC", "--top-p", "0"], "expected a number in (0.0, 1.0]"),
    (["generate", "SPEC", "--top-p", "1.5"], "--top-p"),
    (["generate", "SPEC", "--top-k", "0"], "--top-k"),
    (["generate", "SPEC", "--temperature", "-0.5"], "--temperature"),
    (["generate", "SPEC", "--beam", "0"], "--beam"),
])
def test_bad_flags_are_refused_by_the_parser(capsys, gpt_spec, argv, message) -> None:
    with pytest.raises(SystemExit) as info:
        main([gpt_spec if a == "SPEC" else a for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err, err


def test_semantic_flag_errors_are_clear(capsys, gpt_spec, tiny_args, tmp_path) -> None:
    code, _, err = run_cli(capsys, "generate", gpt_spec, "--beam", "3", "--max-new", "2",
                           *tiny_args)
    assert code == 2 and "--beam is for encoder-decoder specs" in err
    code, _, err = run_cli(capsys, "generate", gpt_spec, "--prompt", "", *tiny_args)
    assert code == 2 and "the prompt is empty" in err
    code, _, err = run_cli(capsys, "train", gpt_spec, "--device", "cuda:0", "--steps", "1",
                           "--out", str(tmp_path / "o"), *tiny_args)
    if not __import__("torch").cuda.is_available():
        assert code == 2 and "device 'cuda:0' is not available" in err


def test_out_holding_other_files_is_refused_before_training(capsys, gpt_spec, tiny_args,
                                                           tmp_path, monkeypatch) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    import attndsl.training.trainer as trainer_module
    monkeypatch.setattr(trainer_module.Trainer, "run", lambda *a, **k: pytest.fail("trained"))
    code, _, err = run_cli(capsys, "train", gpt_spec, "--steps", "2", "--out", str(tmp_path),
                           *tiny_args)
    assert code == 2 and "holds files that are not a checkpoint" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "train", gpt_spec, "--steps", "2", "--out",
                           str(tmp_path / "file"), *tiny_args)
    assert code == 2 and "is a file, not a checkpoint directory" in err


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(capsys, gpt_spec, tiny_args,
                                                             tmp_path, monkeypatch) -> None:
    import errno

    from attndsl.training import checkpoint
    out = tmp_path / "o.npz"
    out.write_bytes(b"previous")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))
    monkeypatch.setattr(checkpoint.os, "fsync", full)
    code, _, err = run_cli(capsys, "run", gpt_spec, "-o", str(out), *tiny_args)
    assert code == 1 and "No space left on device" in err
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["o.npz"]     # no temp file left behind


def test_outputs_and_memory_are_checked_before_running(capsys, gpt_spec, tiny_args,
                                                       tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(attndsl, "compile", lambda *a, **k: pytest.fail("compiled"))
    code, _, err = run_cli(capsys, "run", gpt_spec, "-o", str(tmp_path), *tiny_args)
    assert code == 2 and "is a directory" in err
    code, _, err = run_cli(capsys, "run", gpt_spec, "-o", str(tmp_path / "no" / "o.npz"),
                           *tiny_args)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(capsys, "run", gpt_spec, "--set", "d_model=1000000", "--set",
                           "heads=1000")
    assert code == 2 and "TiB" in err and "nothing was allocated" in err
    code, _, err = run_cli(capsys, "init", gpt_spec, "-o", str(tmp_path / "w.safetensors"),
                           "--max-memory", "100KB", *tiny_args)
    assert code == 2 and "over the 100.00 KiB limit" in err


def test_max_memory_allows_what_fits(capsys, gpt_spec, tiny_args) -> None:
    code, out, _ = run_cli(capsys, "run", gpt_spec, "--seq", "8", "--max-memory", "2GB",
                           *tiny_args)
    assert code == 0 and "logits" in out


def test_the_spec_argument_is_always_a_path(capsys, tmp_path) -> None:
    """`attndsl check /etc/hostname` used to parse the path string itself as spec text."""
    (tmp_path / "hostname").write_text("myhost\n")
    code, _, err = run_cli(capsys, "check", tmp_path / "hostname")
    assert code == 2 and "is not an .attn file" in err
    code, _, err = run_cli(capsys, "check", "model")
    assert code == 2 and "no such spec file: model" in err
