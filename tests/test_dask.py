"""GridSearchCV over defense hyperparameters on a real dask.distributed cluster (2 processes)."""
import os

import joblib
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

distributed = pytest.importorskip("distributed")  # optional dependency (the `dask` extra)

from attribshield import RobustAttributionClassifier  # noqa: E402
from attribshield.attacks import FGSM  # noqa: E402
from attribshield.evaluation.scoring import make_robust_scorer  # noqa: E402
from attribshield.explainers import LimeExplainer  # noqa: E402
from attribshield.maskers import LimeMasker  # noqa: E402
from attribshield.testing import TinyMLP, make_images  # noqa: E402

X, y = make_images(n=24)
GRID = {"attacker__eps": [0.0, 0.1], "masker__top_k": [1, 3]}


def _pid(estimator, X, y):
    return os.getpid()


def search(**kw):
    clf = RobustAttributionClassifier(
        TinyMLP, attacker=FGSM(eps=0.1, random_start=True, random_state=0),
        masker=LimeMasker(top_k=2, random_state=0), explainer=LimeExplainer(n_samples=16, random_state=0),
        refine_every=1, refine_fraction=0.5, max_epochs=2, lr=0.2, batch_size=12, train_split=None, verbose=0,
        random_state=0)
    scoring = {"robust": make_robust_scorer(FGSM(eps=0.1)), "pid": _pid}
    return GridSearchCV(clf, GRID, cv=2, scoring=scoring, refit="robust", **kw)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_grid_search_on_dask_matches_local_run(client):
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    with joblib.parallel_config(backend="dask"):
        gs = search(n_jobs=-1).fit(X, y)
    # every fit and score ran in a worker process, not here
    pids = {int(gs.cv_results_[f"split{i}_test_pid"][j]) for i in range(2) for j in range(4)}
    assert pids <= worker_pids
    robust = gs.cv_results_["mean_test_robust"]
    assert robust.shape == (4,) and np.all((0 <= robust) & (robust <= 1))
    # selected by robust accuracy, and refitted with those parameters
    assert gs.best_index_ == int(np.argmax(robust))
    assert gs.best_estimator_.attacker_.eps == gs.best_params_["attacker__eps"]
    assert gs.best_estimator_.masker_.top_k == gs.best_params_["masker__top_k"]
    # seeded: the distributed search reproduces an in-process one
    local = search(n_jobs=1).fit(X, y)
    np.testing.assert_allclose(local.cv_results_["mean_test_robust"], robust)
    assert local.best_params_ == gs.best_params_


@pytest.mark.slow
def test_grid_search_on_ray_matches_local_run():
    ray = pytest.importorskip("ray")  # optional: `pip install ray`
    from ray.util.joblib import register_ray

    register_ray()
    here = os.path.dirname(os.path.abspath(__file__))  # ray workers must import this module (_pid)
    path = os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        with joblib.parallel_config(backend="ray"):
            gs = search(n_jobs=-1).fit(X, y)
    finally:
        ray.shutdown()
    assert os.getpid() not in {int(gs.cv_results_[f"split{i}_test_pid"][j]) for i in range(2) for j in range(4)}
    local = search(n_jobs=1).fit(X, y)
    np.testing.assert_allclose(local.cv_results_["mean_test_robust"], gs.cv_results_["mean_test_robust"])
