"""batch_norm: torch's BatchNorm semantics (batch statistics and moving running buffers
while training, the buffers at inference) on both backends; buffers are never trained and
travel in checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attndsl  # noqa: E402
from attndsl.training.data import ArrayDataset  # noqa: E402
from attndsl.training.trainer import TrainConfig, Trainer  # noqa: E402

SPEC = """model m {
    input x: float[B, T, 6]
    output logits = linear(batch_norm(linear(x, 8, bias=false), momentum=0.2), 3)
}
train { loss = cross_entropy(logits, target="labels") }
"""


def test_train_and_eval_follow_torch_batchnorm() -> None:
    model = attndsl.compile(SPEC, backend="torch", seed=0, dtype="float64")
    ref = torch.nn.BatchNorm1d(8, momentum=0.2).double()
    w = model.state_dict()
    lin = lambda x: x @ w["linear.weight"].T                             # noqa: E731
    head = lambda h: h @ w["logits.weight"].T + w["logits.bias"]         # noqa: E731
    rng = np.random.default_rng(0)
    model.module.train()
    ref.train()
    for _ in range(3):
        x = rng.standard_normal((4, 5, 6))
        got = model.module(**model.program.convert_inputs({"x": x}))["logits"].detach()
        h = torch.tensor(lin(x)).reshape(-1, 8)
        want = head(ref(h).detach().numpy().reshape(4, 5, 8))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    sd = model.state_dict()
    np.testing.assert_allclose(sd["batch_norm.running_mean"], ref.running_mean.numpy())
    np.testing.assert_allclose(sd["batch_norm.running_var"], ref.running_var.numpy())
    ref.eval()
    numpy_model = attndsl.compile(SPEC, backend="numpy", dtype="float64")
    numpy_model.load_state_dict(sd)                        # inference: the running buffers
    x = rng.standard_normal((2, 3, 6))
    want = head(ref(torch.tensor(lin(x)).reshape(-1, 8)).detach().numpy().reshape(2, 3, 8))
    np.testing.assert_allclose(numpy_model(x=x)["logits"], want, rtol=1e-10)


def test_numpy_training_moves_the_buffers_like_torch_and_never_trains_them(tmp_path) -> None:
    """(No bias before the norm: its gradient would be rounding noise, which Adam scales up
    differently on each backend.)"""
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((32, 5, 6)).astype(np.float32),
             targets=rng.integers(0, 3, (32, 5)))
    data = ArrayDataset(tmp_path / "d.npz")
    runs = {}
    for backend in ("numpy", "torch"):
        model = attndsl.compile(SPEC, backend=backend, seed=0)
        cfg = TrainConfig.from_spec(model.graph.meta["train"], steps=6, batch=4, seq=5,
                                    eval_every=0, schedule="constant", lr=1e-2)
        trainer = Trainer(model, data, cfg)
        losses = [h["loss"] for h in trainer.run(progress=False, checkpoint_dir=tmp_path / backend).history]
        runs[backend] = (losses, model.state_dict(), trainer)
    np.testing.assert_allclose(runs["numpy"][0], runs["torch"][0], rtol=1e-4)
    for name in ("batch_norm.running_mean", "batch_norm.running_var"):
        np.testing.assert_allclose(runs["numpy"][1][name], runs["torch"][1][name], rtol=1e-4,
                                   atol=1e-6)
        assert not np.allclose(runs["numpy"][1][name], 0.0 if "mean" in name else 1.0)
    names = runs["numpy"][2].engine.optimizer.names
    assert "batch_norm.running_mean" not in names and "batch_norm.weight" in names
    from attndsl.training.checkpoint import load_checkpoint
    weights, _, _ = load_checkpoint(tmp_path / "numpy")
    np.testing.assert_array_equal(weights["batch_norm.running_var"],
                                  runs["numpy"][1]["batch_norm.running_var"])
