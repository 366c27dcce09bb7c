"""The closed loop: refinement callback, mask cache, the method's loss and its baselines."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch import NeuralNetClassifier
from skorch.callbacks import LoadInitState

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM, GuidedPGD
from attribshield.checkpoint import SafeCheckpoint, latest_checkpoint
from attribshield.explainers import LimeExplainer
from attribshield.maskers import LimeMasker
from attribshield.refinement import MaskCache
from attribshield.regularizers import SpuriousGradientPenalty
from attribshield.testing import TinyMLP, make_images

X, y = make_images(n=32)


def method(**kw):
    params = dict(module=TinyMLP, attacker=FGSM(eps=0.05, random_start=True),
                  masker=LimeMasker(top_k=2, random_state=0),
                  regularizer=SpuriousGradientPenalty(weight=0.1),
                  explainer=LimeExplainer(n_samples=16, random_state=0),
                  refine_every=1, refine_fraction=1.0, max_epochs=2, lr=0.1, batch_size=16,
                  verbose=0, random_state=0)
    params.update(kw)
    return RobustAttributionClassifier(**params)


@pytest.fixture(scope="module")
def refined():
    return method().fit(X, y)


def test_cache_filled_and_terms_recorded(refined):
    cache = refined.mask_cache_
    assert isinstance(cache, MaskCache)
    assert bool(cache.explained.all()) and cache.rounds == 2
    # exactly top_k segments per image were selected
    assert (cache.selected.sum(1) == 2).all()
    # the second epoch trained on masked images with the penalty
    last = refined.history[-1]
    assert last["refine_n"] == len(X) and last["refine_dur"] > 0
    assert all({"adv_loss", "masked_loss", "penalty_loss"} <= set(b) for b in last["batches"])
    assert all("masked_loss" not in b for b in refined.history[0]["batches"])  # nothing cached yet


def test_rotating_fraction_covers_everything():
    clf = method(refine_fraction=0.5, max_epochs=1, refine_max_age=None).fit(X, y)
    cache = clf.mask_cache_
    assert int(cache.explained.sum()) == 16 and cache.cursor == 16
    clf.partial_fit(X, y)
    assert bool(clf.mask_cache_.explained.all()) and clf.mask_cache_.cursor == 0


def test_refine_every_schedules_rounds():
    clf = method(refine_every=2, max_epochs=3).fit(X, y)
    rows = [("refine_n" in row) for row in clf.history]
    assert rows == [False, True, False]


def test_every_term_off_equals_plain_training():
    kw = dict(max_epochs=3, lr=0.1, batch_size=8, verbose=0, train_split=None,
              optimizer=torch.optim.SGD, iterator_train__shuffle=True)
    # a module without lazy layers: lazy ones draw their initial weights at the first forward
    from attribshield.models import DigitsNet

    kw.update(module__num_classes=3, module__width=4)
    ours = RobustAttributionClassifier(DigitsNet, random_state=3, **kw).fit(X, y)
    torch.manual_seed(3)
    plain = NeuralNetClassifier(DigitsNet, criterion=torch.nn.CrossEntropyLoss, **kw).fit(
        torch.as_tensor(X), torch.as_tensor(y))
    for a, b in zip(ours.module_.parameters(), plain.module_.parameters()):
        torch.testing.assert_close(a, b)


def test_guided_attacker_receives_the_mask(monkeypatch):
    seen = []
    orig = GuidedPGD.perturb

    def spy(self, model, X, y, *, target=None, mask=None):
        seen.append(None if mask is None else float(mask.sum()))
        return orig(self, model, X, y, target=target, mask=mask)

    monkeypatch.setattr(GuidedPGD, "perturb", spy)
    method(attacker=GuidedPGD(eps=0.05, steps=1)).fit(X, y)
    assert seen[0] is None  # first epoch: no cache yet
    assert any(s is not None and s > 0 for s in seen)  # later training batches get the cached mask


def test_regularizer_without_masker_is_an_error():
    with pytest.raises(ValueError, match="needs a masker"):
        method(masker=None).fit(X, y)


def test_grid_search_over_method_parameters():
    grid = {"masker__top_k": [1, 3], "regularizer__weight": [0.0, 0.1], "refine_every": [1]}
    gs = GridSearchCV(method(max_epochs=1), grid, cv=2).fit(X, y)
    assert len(gs.cv_results_["params"]) == 4
    assert gs.best_estimator_.masker_.top_k == gs.best_params_["masker__top_k"]


def test_clone_pickle_and_explain_after_refinement(refined):
    c = clone(refined)
    assert not c.initialized_ and not hasattr(c, "mask_cache_")
    restored = pickle.loads(pickle.dumps(refined))
    torch.testing.assert_close(restored.mask_cache_.selected, refined.mask_cache_.selected)
    np.testing.assert_allclose(restored.predict_proba(X), refined.predict_proba(X))
    att = restored.explain(X[:2])
    assert att.weights.shape[0] == 2 and torch.isfinite(torch.as_tensor(att.weights)).all()


def test_top_k_above_segment_count_is_clipped_with_warning():
    with pytest.warns(UserWarning, match="top_k"):
        clf = method(masker=LimeMasker(top_k=100), max_epochs=1).fit(X, y)
    n_segments = int(clf.mask_cache_.segments[0].max()) + 1
    assert (clf.mask_cache_.selected.sum(1) == n_segments).all()


def test_resume_keeps_mask_cache(tmp_path):
    first = method(max_epochs=1, callbacks=[SafeCheckpoint(tmp_path)]).fit(X, y)
    assert (Path(latest_checkpoint(tmp_path)) / "mask_cache.pt").exists()
    cp = SafeCheckpoint(tmp_path)
    resumed = method(max_epochs=1, callbacks=[cp, LoadInitState(cp)], refine_every=5)
    resumed.fit(X, y)
    # no refinement round ran in the resumed epoch (refine_every=5): the cache came from disk
    torch.testing.assert_close(resumed.mask_cache_.selected, first.mask_cache_.selected)
    assert len(resumed.history) == 2  # history resumed from the checkpoint


def test_deprecated_refinement_settings_warn_and_still_act(tmp_path):
    clf = method(max_epochs=3, callbacks__refinement__max_rounds=1, callbacks__refinement__max_age=None,
                 callbacks__refinement__dirname=str(tmp_path))
    with pytest.warns(FutureWarning) as record:
        clf.fit(X, y)
    messages = " ".join(str(w.message) for w in record)
    assert all(name in messages for name in ("refine_max_rounds", "refine_max_age", "SafeCheckpoint"))
    assert clf.mask_cache_.rounds == 1 and (tmp_path / "mask_cache.pt").exists()
    assert [("refine_n" in row) for row in clf.history] == [True, False, False]


def test_mask_cache_roundtrip(tmp_path):
    cache = MaskCache(5, 4, 4)
    cache.update(torch.tensor([1, 3]), torch.ones(2, 4, 4, dtype=torch.long),
                 torch.tensor([[True, False], [False, True]]))
    cache.save(tmp_path / "c.pt")
    back = MaskCache.load(tmp_path / "c.pt")
    torch.testing.assert_close(back.selected, cache.selected)
    assert back.explained.tolist() == [False, True, False, True, False]


def test_max_rounds_freezes_masks():
    clf = method(max_epochs=3, refine_max_rounds=1).fit(X, y)
    assert clf.mask_cache_.rounds == 1
    assert [("refine_n" in row) for row in clf.history] == [True, False, False]


def test_max_age_keeps_only_recent_masks():
    clf = method(refine_fraction=0.5, max_epochs=3).fit(X, y)  # default max_age=1
    cache = clf.mask_cache_
    assert cache.rounds == 3 and int(cache.explained.sum()) == 16  # only the last round's half
    assert bool((cache.round_of[cache.explained] == 3).all())
    keep_all = method(refine_fraction=0.5, max_epochs=3, refine_max_age=None).fit(X, y)
    assert bool(keep_all.mask_cache_.explained.all())


def test_mask_cache_expire():
    cache = MaskCache(4, 2, 2)
    for _r, idx in enumerate([[0, 1], [2], [3]]):
        cache.update(torch.tensor(idx), torch.zeros(len(idx), 2, 2, dtype=torch.long),
                     torch.ones(len(idx), 1, dtype=torch.bool))
        cache.rounds += 1
    assert cache.expire(2) == 2  # round 1's two samples are older than two rounds
    assert cache.explained.tolist() == [False, False, True, True]
