"""RAdam, Lion and Sophia, and the cosine-with-restarts and exponential schedules: each
optimizer against its paper's update written out here, torch and array implementations step
for step, and convergence to a known optimum."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attndsl.training.array_optim import ArrayOptimizer  # noqa: E402
from attndsl.training.optim import make_optimizer  # noqa: E402
from attndsl.training.schedules import make_schedule  # noqa: E402

KINDS = {
    "radam": dict(lr=0.05, betas=(0.9, 0.999), weight_decay=0.01),
    "lion": dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1),
    "sophia": dict(lr=0.02, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1),
}


def _params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}


@pytest.mark.parametrize("kind", KINDS)
def test_torch_and_array_optimizers_take_the_same_steps(kind) -> None:
    rng = np.random.default_rng(0)
    ours = _params(rng)
    named = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in ours.items()}
    mine = ArrayOptimizer(kind, ours, **KINDS[kind])
    ref = make_optimizer(kind, named, **KINDS[kind])
    for step in range(12):
        grads = {k: rng.standard_normal(v.shape) for k, v in ours.items()}
        for k, p in named.items():
            p.grad = torch.tensor(grads[k])
        mine.step(ours, grads)
        ref.step()
        if kind == "sophia" and step % 3 == 2:
            hess = {k: rng.standard_normal(v.shape) for k, v in ours.items()}
            for k, p in named.items():
                p.grad = torch.tensor(hess[k])
            mine.update_hessian(hess, tokens=32)
            ref.update_hessian(32)
        for k, p in named.items():
            np.testing.assert_allclose(ours[k], p.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_radam_is_torchs_and_the_papers_rectification() -> None:
    """Liu et al. 2020, Alg. 2: SGD with momentum while rho_t <= 5, then the rectified step."""
    lr, (b1, b2), eps = 0.1, (0.9, 0.999), 1e-8
    p = {"x": np.array([1.0, -2.0])}
    opt = ArrayOptimizer("radam", p, lr=lr, betas=(b1, b2), eps=eps)
    x, m, v = p["x"].copy(), 0.0, 0.0
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, 9):
        g = 2 * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            x = x - lr * r * m_hat / (np.sqrt(v / (1 - b2 ** t)) + eps / math.sqrt(1 - b2 ** t))
        else:
            x = x - lr * m_hat
        opt.step(p, {"x": 2 * p["x"]})
        np.testing.assert_allclose(p["x"], x, rtol=1e-12)
    assert rho_inf - 2 * 8 * b2 ** 8 / (1 - b2 ** 8) > 5     # both branches were taken


def test_lion_is_the_papers_update() -> None:
    """Chen et al. 2023, Alg. 2."""
    lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.1
    rng = np.random.default_rng(1)
    p = {"w": rng.standard_normal((2, 3))}
    opt = ArrayOptimizer("lion", p, lr=lr, betas=(b1, b2), weight_decay=wd)
    x, m = p["w"].copy(), np.zeros((2, 3))
    for _ in range(5):
        g = rng.standard_normal((2, 3))
        c = b1 * m + (1 - b1) * g
        x = x - lr * (np.sign(c) + wd * x)
        m = b2 * m + (1 - b2) * g
        opt.step(p, {"w": g})
        np.testing.assert_allclose(p["w"], x, rtol=1e-12)


def test_sophia_is_the_papers_update() -> None:
    """Liu et al. 2023, Alg. 3: clip(m / max(rho h, eps), 1) with h the EMA of B g^2 (Alg. 2)."""
    lr, b1, b2, rho, wd, tokens = 0.05, 0.965, 0.99, 0.04, 0.1, 16
    rng = np.random.default_rng(2)
    p = {"w": rng.standard_normal((2, 3))}
    opt = ArrayOptimizer("sophia", p, lr=lr, betas=(b1, b2), rho=rho, weight_decay=wd)
    x, m, h = p["w"].copy(), np.zeros((2, 3)), np.zeros((2, 3))
    for t in range(6):
        g = rng.standard_normal((2, 3))
        m = b1 * m + (1 - b1) * g
        x = x - lr * wd * x
        x = x - lr * np.clip(m / np.maximum(rho * h, 1e-15), -1, 1)
        opt.step(p, {"w": g})
        if t % 2 == 1:
            gh = rng.standard_normal((2, 3)) * 0.1
            h = b2 * h + (1 - b2) * tokens * gh * gh
            opt.update_hessian({"w": gh}, tokens)
        np.testing.assert_allclose(p["w"], x, rtol=1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw", "radam", "lion", "sophia"])
def test_every_optimizer_finds_the_known_optimum(kind) -> None:
    """Cross-entropy of softmax(z) against a target distribution q is minimized exactly at
    softmax(z) = q. Sophia's Hessian comes from labels sampled from the model (GNB)."""
    q = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    rng = np.random.default_rng(3)
    params = {"z": np.zeros((1, 5))}
    lr = {"sgd": 1.0, "adam": 0.05, "adamw": 0.05, "radam": 0.05, "lion": 0.01,
          "sophia": 0.02}[kind]
    opt = ArrayOptimizer(kind, params, lr=lr, momentum=0.9, betas=(0.9, 0.99))
    steps = 600
    for t in range(steps):
        opt.set_lr(lr * (1 - t / steps))                    # decays to 0: sign methods settle
        p = _softmax(params["z"][0])
        opt.step(params, {"z": (p - q)[None]})
        if kind == "sophia" and t % 10 == 9:
            n = 256
            sampled = rng.choice(5, size=n, p=_softmax(params["z"][0]))
            g_hat = _softmax(params["z"][0]) - np.bincount(sampled, minlength=5) / n
            opt.update_hessian({"z": g_hat[None]}, tokens=n)
    np.testing.assert_allclose(_softmax(params["z"][0]), q, atol=5e-3)


def test_cosine_restarts_is_torchs_sgdr() -> None:
    sched = make_schedule("cosine_restarts", lr=0.1, period=5, mult=2, min_lr=0.01)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2,
                                                               eta_min=0.01)
    for step in range(40):
        assert sched(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        ref.step()
    assert sched(5) == sched(15) == 0.1                       # restarts after 5, then 10


def test_exponential_and_its_warmup() -> None:
    sched = make_schedule("exponential", lr=1.0, gamma=0.5, warmup=3, min_lr=0.1)
    assert [sched(s) for s in range(8)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 0.5, 0.25, 0.125, 0.1])
    with pytest.raises(ValueError, match="gamma"):
        make_schedule("exponential", lr=1.0, gamma=1.5)


SPEC = """model {{
    input x: int[B, T]
    output logits = linear(embedding(x, 11, 8), 11)
}}

train {{
    optimizer = {optimizer}
    schedule = {schedule}
}}
"""


def test_the_train_section_sets_them(tmp_path) -> None:
    import attndsl
    from attndsl.training.trainer import TrainConfig
    path = tmp_path / "m.attn"
    path.write_text(SPEC.format(optimizer="sophia(lr=2e-4, rho=0.05, interval=5)",
                                schedule="cosine_restarts(period=100, mult=2, warmup=10)"))
    cfg = TrainConfig.from_spec(attndsl.compile(path).graph.meta["train"], steps=500)
    assert (cfg.optimizer, cfg.lr, cfg.rho, cfg.hessian_interval, cfg.betas) == (
        "sophia", 2e-4, 0.05, 5, (0.965, 0.99))
    sched = cfg.make_schedule()
    assert (sched.period, sched.mult, sched.warmup) == (100, 2, 10)
    path.write_text(SPEC.format(optimizer="lion()", schedule="exponential(gamma=0.99)"))
    cfg = TrainConfig.from_spec(attndsl.compile(path).graph.meta["train"], steps=500)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("lion", 1e-4, 0.0)
    assert cfg.make_schedule()(10) == pytest.approx(1e-4 * 0.99 ** 10)


@pytest.mark.parametrize("optimizer, schedule, message", [
    ("lion(betas=(0.9, 1.5))", "constant()", "betas must lie in"),
    ("radam()", "exponential(gamma=2.0)", "gamma must lie in"),
    ("sophia(interval=0)", "constant()", "interval"),
    ("radam()", "cosine_restarts()", "period"),
])
def test_bad_settings_are_spec_errors(tmp_path, capsys, optimizer, schedule, message) -> None:
    from attndsl.cli import main
    path = tmp_path / "m.attn"
    path.write_text(SPEC.format(optimizer=optimizer, schedule=schedule))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    line = 7 if schedule == "constant()" else 8
    assert message in err and f"m.attn:{line}:" in err and "^" in err, err
