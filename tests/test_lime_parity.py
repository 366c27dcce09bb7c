"""Parity of the batched LimeExplainer with the real ``lime`` package.

``lime`` draws its masks as ``RandomState(seed).randint(0, 2, P * S).reshape(P, S)`` with the
first row set to ones (``LimeImageExplainer(random_state=RandomState(seed))`` with an explicit
``random_seed`` for the segmentation, so no draw is spent on it): we reproduce those masks,
hand them to ``LimeExplainer(samples=...)`` with the same segments, and compare coefficients,
intercepts and scores.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from attribshield.explainers import GridSegmenter, LimeExplainer, LimeReferenceExplainer, SlicSegmenter


def lime_masks(seed: int, n_samples: int, n_segments: int) -> np.ndarray:
    data = np.random.RandomState(seed).randint(0, 2, n_samples * n_segments).reshape(n_samples, n_segments)
    data[0, :] = 1
    return data.astype(bool)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def compare(model, X, segments, n_samples=150, seed=3, dtype=torch.float64):
    """Run lime and ours on the same segments and masks; return (ours, lime's)."""
    model = model.to(dtype)
    ref = LimeReferenceExplainer(n_samples=n_samples, random_state=seed, batch_size=50).explain(
        model, X.to(dtype), segments=segments
    )
    masks = []
    s_max = int(segments.max()) + 1
    for i in range(X.shape[0]):
        s_i = int(segments[i].max()) + 1
        m = np.ones((n_samples, s_max), dtype=bool)
        m[:, :s_i] = lime_masks(seed, n_samples, s_i)
        masks.append(m)
    ours = LimeExplainer(batch_size=64).explain(
        model, X.to(dtype), ref.target, segments=segments, samples=torch.from_numpy(np.stack(masks))
    )
    return ours, ref


def small_cnn(seed=0, in_channels=3):
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def test_parity_float64_grid_random_net():
    X = torch.rand(3, 3, 32, 32)
    seg = GridSegmenter().segment(X)
    ours, ref = compare(small_cnn(), X, seg)
    assert torch.equal(ours.target, ref.target)
    assert rel_err(ours.weights, ref.weights) < 1e-10
    assert rel_err(ours.intercept, ref.intercept) < 1e-10
    assert float((ours.score - ref.score).abs().max()) < 1e-10


def test_parity_float64_single_channel_and_uneven_segments():
    X = torch.rand(2, 1, 8, 8)
    seg = GridSegmenter(cell=2).segment(X)
    seg[1] = seg[1] // 3  # 6 segments in image 1, 16 in image 0
    ours, ref = compare(small_cnn(1, in_channels=1), X, seg, n_samples=80)
    assert rel_err(ours.weights, ref.weights) < 1e-10
    assert torch.equal(ours.valid, ref.valid)
    assert rel_err(ours.intercept, ref.intercept) < 1e-10


# --------------------------------------------------------------------------- real CIFAR-10
def _load_cifar_batch(root, name):
    with open(root / "cifar-10-batches-py" / name, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    X = torch.from_numpy(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)).float() / 255
    return X, torch.as_tensor(d["labels"], dtype=torch.long)


@pytest.fixture(scope="module")
def trained_cifar(cifar10_root):
    """A tiny CNN trained for a few seconds on 2,000 real CIFAR-10 training images, plus
    real test images."""
    Xtr, ytr = _load_cifar_batch(cifar10_root, "data_batch_1")
    Xte, yte = _load_cifar_batch(cifar10_root, "test_batch")
    Xtr, ytr = Xtr[:2000], ytr[:2000]
    torch.manual_seed(0)
    model = small_cnn(0)
    for p in model.parameters():  # restart from a default-scale initialisation
        if p.ndim > 1:
            torch.nn.init.kaiming_uniform_(p, a=5**0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _epoch in range(4):  # about 2 s on 2 CPU cores
        perm = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), 100):
            idx = perm[i : i + 100]
            loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(Xte[:500]).argmax(1) == yte[:500]).float().mean())
    return model, Xte[:4], yte[:4], acc


def test_trained_model_learned_something(trained_cifar):
    _, _, _, acc = trained_cifar
    assert acc > 0.2  # chance is 0.1


@pytest.mark.parametrize("segmenter", [GridSegmenter(), SlicSegmenter(n_segments=25)], ids=["grid", "slic"])
def test_parity_real_cifar_trained_model_float64(trained_cifar, segmenter):
    model, X, _, _ = trained_cifar
    seg = segmenter.segment(X)
    ours, ref = compare(model, X, seg, n_samples=200)
    model.float()
    assert rel_err(ours.weights, ref.weights) < 1e-9
    assert rel_err(ours.intercept, ref.intercept) < 1e-9
    assert float((ours.score - ref.score).abs().max()) < 1e-9
    # the trained model gives informative explanations: not all weights are ~0
    assert float(ref.weights.abs().max()) > 1e-3


def test_parity_real_cifar_trained_model_float32_end_to_end(trained_cifar):
    model, X, y, _ = trained_cifar
    seg = SlicSegmenter(n_segments=25).segment(X)
    ref = LimeReferenceExplainer(n_samples=200, random_state=7, batch_size=100).explain(model.double(), X, y,
                                                                                        segments=seg)
    model.float()
    masks = []
    s_max = int(seg.max()) + 1
    for i in range(X.shape[0]):
        s_i = int(seg[i].max()) + 1
        m = np.ones((200, s_max), dtype=bool)
        m[:, :s_i] = lime_masks(7, 200, s_i)
        masks.append(m)
    ours = LimeExplainer().explain(model, X, y, segments=seg, samples=torch.from_numpy(np.stack(masks)))
    assert ours.weights.dtype == torch.float32
    # float32 forward passes against lime on the float64 model: within 1e-4 relative
    assert rel_err(ours.weights, ref.weights) < 1e-4
    assert rel_err(ours.intercept, ref.intercept) < 1e-4


@pytest.mark.parametrize("kwargs, name", [
    ({"n_samples": 1}, "n_samples"), ({"batch_size": 0}, "batch_size"), ({"kernel_width": 0}, "kernel_width"),
    ({"random_state": -1}, "random_state")])
def test_reference_explainer_rejects_bad_parameters_before_lime_runs(kwargs, name):
    with pytest.raises(ValueError, match=f"LimeReferenceExplainer: {name} must be"):
        LimeReferenceExplainer(**kwargs).explain(torch.nn.Flatten(), torch.zeros(1, 3, 8, 8))
