"""The standard training recipe: batched crop + flip, the one-cycle schedule, resuming it."""
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM
from attribshield.augment import RandomCropFlip, follow
from attribshield.callbacks import one_cycle
from attribshield.explainers import LimeExplainer
from attribshield.maskers import LimeMasker
from attribshield.testing import TinyMLP


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_crop_flip_equals_torchvision_per_image(padding):
    X = torch.rand(16, 3, 8, 8)
    aug = RandomCropFlip(padding=padding, random_state=0)
    dy, dx, flipped = aug.draw(16, "cpu")
    out, src = aug.apply(X, dy, dx, flipped, padding)
    for n in range(16):
        ref = TF.crop(TF.pad(X[n], [padding]), int(dy[n]), int(dx[n]), 8, 8)
        if flipped[n]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(ref, out[n])
    # the source map tells where each pixel came from: following the image itself reproduces it
    for c in range(3):
        assert torch.equal(follow(X[:, c], src, 0.0), out[:, c])


def test_crop_flip_draws_every_offset_and_both_flips_and_is_seeded():
    aug = RandomCropFlip(padding=2, random_state=3)
    dy, dx, fl = aug.draw(2000, "cpu")
    assert set(dy.tolist()) == set(range(5)) and set(dx.tolist()) == set(range(5))
    assert 0.45 < fl.float().mean() < 0.55
    again = RandomCropFlip(padding=2, random_state=3).draw(2000, "cpu")
    assert all(torch.equal(a, b) for a, b in zip((dy, dx, fl), again))


def test_crop_flip_rejects_bad_input():
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=True)(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        RandomCropFlip()(torch.rand(4, 4))


def test_one_cycle_shape():
    lrs = one_cycle(0.2, epochs=5, steps_per_epoch=10, pct_start=0.4).simulate(50, 0.2)
    peak = int(np.argmax(lrs))
    assert abs(lrs.max() - 0.2) < 1e-9 and 18 <= peak <= 20
    assert np.all(np.diff(lrs[:peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    assert lrs[0] == pytest.approx(0.2 / 25) and lrs[-1] < 1e-3
    with pytest.raises(ValueError, match="epochs"):
        one_cycle(0.2, epochs=0)
    with pytest.raises(ValueError, match="max_lr"):
        one_cycle(float("nan"), epochs=2)


def _net(**kw):
    return RobustAttributionClassifier(TinyMLP, module__num_classes=3, max_epochs=4, batch_size=16, lr=0.1,
                                       verbose=0, random_state=0,
                                       callbacks=[("lr_scheduler", one_cycle(0.1, epochs=4))], **kw)


def test_one_cycle_resumes_where_it_stopped():
    rng = np.random.default_rng(0)
    X = rng.random((48, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 3, 48)
    full = _net().fit(X, y)
    lrs_full = [b["event_lr"] for e in full.history for b in e["batches"]]
    part = _net()
    part.set_params(max_epochs=2).fit(X, y)
    # a fresh estimator restored from the interrupted one's state, as the CLI resumes
    resumed = _net()
    resumed.initialize()
    resumed.module_.load_state_dict(part.module_.state_dict())
    resumed.optimizer_.load_state_dict(part.optimizer_.state_dict())
    resumed.history = part.history
    resumed.set_params(max_epochs=2).partial_fit(X, y)
    lrs_resumed = [b["event_lr"] for e in resumed.history for b in e["batches"]]
    assert len(lrs_resumed) == len(lrs_full) == 12
    np.testing.assert_allclose(lrs_resumed, lrs_full, rtol=1e-12)


def test_cached_masks_follow_the_augmentation():
    """With crop + flip, the masked-input loss fills the segments the cache selected, moved
    with the pixels: every masked pixel of the augmented batch comes from a selected segment."""
    rng = np.random.default_rng(1)
    X = rng.random((32, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 3, 32)
    clf = RobustAttributionClassifier(
        TinyMLP, module__num_classes=3, max_epochs=2, batch_size=16, lr=0.05, verbose=0, random_state=0,
        attacker=FGSM(eps=0.05, random_start=True), masker=LimeMasker(top_k=2, fill="constant", fill_value=0.0),
        explainer=LimeExplainer(n_samples=20, random_state=0), refine_fraction=1.0,
        augment=RandomCropFlip(padding=2, random_state=0))
    clf.fit(X, y)
    idx = torch.arange(16)
    aug = RandomCropFlip(padding=2, random_state=5)
    Xb, src = aug(torch.as_tensor(X[:16]))
    segments, selected, has = clf._batch_selection(idx, src)
    assert bool(has.all())
    cache = clf.mask_cache_
    for n in range(16):
        seg0 = cache.segments[n].long().flatten()
        chosen = cache.selected[n].nonzero().flatten()
        moved = segments[n].flatten()
        inside = src[n].flatten() >= 0
        src_seg = seg0[src[n].flatten().clamp_min(0)]
        assert torch.equal(moved[inside], src_seg[inside])
        assert not bool(selected[n, moved[~inside]].any())  # padding is never masked
        assert set(torch.unique(moved[selected[n, moved]]).tolist()) <= set(chosen.tolist())


def test_gpu_check_refuses_to_run_without_cuda():
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check would run for minutes")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    res = subprocess.run([sys.executable, str(script), "--skip-tests"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "no CUDA device" in res.stderr


def test_bf16_warning_on_a_cpu_without_native_bf16(monkeypatch, tmp_path, capsys):
    from attribshield import cli

    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    code = cli.main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--method", "clean", "--bf16",
                     "--train-subset", "64", "--no-progress"])
    assert code == 0
    assert "no native bfloat16" in capsys.readouterr().err
