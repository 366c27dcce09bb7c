import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM, PGD
from attribshield.testing import TinyMLP, make_images


def make_clf(**kw):
    params = dict(module=TinyMLP, max_epochs=3, lr=0.1, batch_size=16,
                  verbose=0, random_state=0)
    params.update(kw)
    return RobustAttributionClassifier(**params)


@pytest.fixture(scope="module")
def data():
    return make_images(n=48)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return make_clf(attacker=FGSM(eps=0.05, random_start=True), max_epochs=8).fit(X, y)


def test_fit_predict_proba(fitted, data):
    X, y = data
    proba = fitted.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(fitted.predict(X), proba.argmax(1))
    assert fitted.score(X, y) > 0.8  # separable toy data


def test_attacker_changes_training(data):
    X, y = data
    clean = make_clf().fit(X, y)
    adv = make_clf(attacker=PGD(eps=0.3, steps=2)).fit(X, y)
    # the same seed, the same data: only the adversarial loss differs
    assert not np.allclose(clean.predict_proba(X), adv.predict_proba(X))


def test_clean_weight_mixes_losses(data):
    X, y = data
    clf = make_clf(attacker=FGSM(eps=0.05), clean_weight=0.5, max_epochs=1).fit(X, y)
    batches = clf.history[-1]["batches"]
    assert all("adv_loss" in b and "clean_loss" in b for b in batches)
    b = batches[0]
    np.testing.assert_allclose(b["train_loss"], 0.5 * b["adv_loss"] + 0.5 * b["clean_loss"], rtol=1e-4)


def test_same_seed_same_weights(data):
    X, y = data
    a = make_clf(attacker=FGSM(eps=0.05, random_start=True)).fit(X, y)
    b = make_clf(attacker=FGSM(eps=0.05, random_start=True)).fit(X, y)
    for pa, pb in zip(a.module_.parameters(), b.module_.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_uint8_input_is_scaled(data):
    X, y = data
    X8 = np.round(X * 255).astype(np.uint8)
    a = make_clf().fit(X8, y)
    b = make_clf().fit(np.round(X * 255).astype(np.float32) / 255, y)
    np.testing.assert_allclose(a.predict_proba(X8), b.predict_proba(X8.astype(np.float32) / 255), atol=1e-5)


def test_clone_is_unfitted_copy(fitted):
    c = clone(fitted)
    assert not c.initialized_
    assert c.attacker is not fitted.attacker
    assert c.get_params()["attacker__eps"] == fitted.attacker.eps
    assert not hasattr(c, "attacker_")


def test_get_set_params_roundtrip(fitted):
    c = clone(fitted)
    params = c.get_params(deep=True)
    assert "_params_to_validate" not in params
    assert params["attacker__eps"] == 0.05
    c.set_params(attacker__eps=0.1, lr=0.2)
    assert c.attacker.eps == 0.1 and c.lr == 0.2
    assert c.get_params()["attacker__eps"] == 0.1


def test_set_params_on_fitted_rebuilds_component(data):
    X, y = data
    clf = make_clf(attacker=FGSM(eps=0.05), max_epochs=1).fit(X, y)
    clf.set_params(attacker__eps=0.2)
    assert clf.attacker_.eps == 0.2
    assert not hasattr(clf, "attacker__eps")  # no dunder attribute beside the component


def test_set_params_on_missing_component_raises():
    with pytest.raises(ValueError, match="masker is None"):
        make_clf().set_params(masker__top_k=3)


def test_grid_search_over_attacker_eps(data):
    X, y = data
    gs = GridSearchCV(make_clf(attacker=FGSM(eps=0.05), max_epochs=2), {"attacker__eps": [0.0, 0.05]}, cv=2)
    gs.fit(X, y)
    assert gs.best_params_["attacker__eps"] in (0.0, 0.05)
    assert len(gs.cv_results_["mean_test_score"]) == 2
    assert gs.best_estimator_.attacker_.eps == gs.best_params_["attacker__eps"]


def test_pipeline_with_flattening_transformer(data):
    X, y = data
    flat = X.reshape(len(X), -1)
    pipe = Pipeline([("clip", FunctionTransformer(lambda z: np.clip(z, 0, 1))),
                     ("clf", make_clf(input_shape=(1, 8, 8)))])
    pipe.fit(flat, y)
    assert pipe.predict(flat).shape == (len(X),)
    assert pipe.score(flat, y) > 0.5


def test_pickle_roundtrip(fitted, data):
    X, _ = data
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(restored.predict_proba(X), fitted.predict_proba(X))
    assert restored.attacker_.eps == fitted.attacker_.eps


def test_partial_fit_continues(data):
    X, y = data
    clf = make_clf(max_epochs=1).fit(X, y)
    clf.partial_fit(X, y)
    assert len(clf.history) == 2


def test_non_contiguous_labels_are_encoded(data):
    X, y = data
    labels = np.array([3, 7, 9])[y]
    clf = make_clf(max_epochs=6).fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, [3, 7, 9])
    assert set(np.unique(clf.predict(X))) <= {3, 7, 9}
    assert clf.score(X, labels) > 0.6
    with pytest.raises(ValueError, match="not seen in fit"):
        clf.get_loss(torch.zeros(2, 3), torch.tensor([3, 5]))


def test_torch_dataset_input(data):
    X, y = data
    ds = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    clf = make_clf(max_epochs=2, classes=[0, 1, 2]).fit(ds, None)
    assert clf.predict(X).shape == (len(X),)


def test_channels_last_and_bf16_run(data):
    X, y = data
    from attribshield.models import DigitsNet

    clf = RobustAttributionClassifier(DigitsNet, module__width=4, module__num_classes=3, max_epochs=1, verbose=0,
                                      channels_last=True,
                                      autocast="bf16", attacker=FGSM(eps=0.05), random_state=0)
    clf.fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float32 and np.isfinite(proba).all()


def test_explain_returns_attribution(fitted, data):
    X, y = data
    att = fitted.explain(X[:3])
    assert att.weights.shape[0] == 3
    assert att.segments.shape == (3, 8, 8)
    np.testing.assert_array_equal(np.asarray(att.target), fitted.predict(X[:3]))
    att_y = fitted.explain(X[:3], y=y[:3])
    np.testing.assert_array_equal(np.asarray(att_y.target), y[:3])


def test_explain_requires_fit(data):
    from skorch.exceptions import NotInitializedError

    with pytest.raises(NotInitializedError):
        make_clf().explain(data[0][:2])


@pytest.mark.cuda
def test_cuda_fit_predict(data):
    X, y = data
    clf = make_clf(device="cuda", attacker=PGD(eps=0.05, steps=2)).fit(X, y)
    assert next(clf.module_.parameters()).is_cuda
    assert clf.predict(X).shape == (len(X),)
