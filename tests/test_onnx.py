"""ONNX export: every spec in specs/ (tiny sizes) through torch.onnx.export (dynamo) with
dynamic axes, onnx.checker, and onnxruntime at other sizes against the NumPy backend."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from helpers import TINY_CONFIGS, spec_paths  # noqa: E402

import attndsl  # noqa: E402
from attndsl.cli import main  # noqa: E402
from attndsl.onnx_export import ExportError, export_onnx  # noqa: E402


@pytest.mark.parametrize("spec", spec_paths(), ids=lambda p: p.stem)
def test_every_spec_exports_and_matches_numpy(spec, tmp_path) -> None:
    """Every spec exports, except mixture-of-experts and LSH ones, refused up front."""
    model = attndsl.compile(spec, config=TINY_CONFIGS[spec.stem], seed=3)
    ops = {n.op for n in model.graph.nodes.values()}
    refused = ("mixture-of-experts routing" if "moe_combine" in ops
               else "LSH attention" if "lsh_attention" in ops else None)
    if refused:
        with pytest.raises(ExportError, match=refused):
            export_onnx(model, tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()
        return
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.max_error <= 1e-4
    onnx.checker.check_model(str(report.path))
    # the axes are dynamic: run again at sizes neither the trace nor the check used
    graph = model.graph
    odd = 8 if spec.stem == "compressive" else 7       # its segments are multiples of rate
    sizes = {s: odd for axes in report.dynamic.values() for s in axes}
    feed = attndsl.model.random_inputs(graph, sizes, 5)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    got = session.run(report.outputs, feed)
    want = model(**feed)
    for name, value in zip(report.outputs, got):
        state = name.removesuffix(".next")            # a recurrent state's next value
        ref = np.asarray(want[state if state in graph.inputs else name])
        assert value.shape == ref.shape
        assert np.abs(value - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0), name


def test_cli_exports_a_run_directory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "specs/nanogpt.attn", "--steps", "2", "--batch", "2", "--seq", "8",
                 "--out", str(run), *sum((["--set", f"{k}={v}"] for k, v in
                                          TINY_CONFIGS["nanogpt"].items()), [])]) == 0
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dynamic axes tokens[B, T]" in text and "onnx.checker passed" in text
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))


def test_export_errors_are_clear_and_write_nothing(tmp_path, capsys, monkeypatch) -> None:
    assert main(["export", "specs/gpt.attn", "--onnx", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = attndsl.compile("specs/gpt.attn", config=TINY_CONFIGS["gpt"])
    with pytest.raises(ExportError, match="needs the onnx extra"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
