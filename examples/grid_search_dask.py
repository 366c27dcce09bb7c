"""Select defense hyperparameters by robust accuracy with a grid search on a dask cluster.

Runs ``GridSearchCV`` over ``attacker__eps`` x ``masker__top_k`` with joblib's dask backend,
scored by robust accuracy under PGD (``make_robust_scorer``), on the embedded digits data.

    python examples/grid_search_dask.py                          # local 2-worker cluster
    python examples/grid_search_dask.py --scheduler tcp://HOST:8786   # an existing cluster
    python examples/grid_search_dask.py --backend ray            # ray's joblib backend
    ATTRIBSHIELD_FAST=1 python examples/grid_search_dask.py      # tiny smoke run (CI), or --fast

Every worker must be able to import ``attribshield`` (install it on the workers).
"""
from __future__ import annotations

import argparse
import os
import time


def build_search(fast: bool):
    from sklearn.model_selection import GridSearchCV

    from attribshield import RobustAttributionClassifier
    from attribshield.attacks import FGSM, PGD
    from attribshield.evaluation import make_robust_scorer
    from attribshield.explainers import LimeExplainer
    from attribshield.maskers import LimeMasker

    if fast:
        from attribshield.testing import TinyMLP as module
        module_kw = {}
        grid = {"attacker__eps": [0.05, 0.1], "masker__top_k": [1, 2]}
        epochs, n_samples, lr, batch_size, eps = 4, 16, 0.2, 16, 0.05
    else:
        from attribshield.models import DigitsNet as module
        module_kw = {"module__num_classes": 10}
        grid = {"attacker__eps": [0.05, 0.1, 0.2], "masker__top_k": [1, 2, 4]}
        epochs, n_samples, lr, batch_size, eps = 10, 64, 0.05, 64, 0.1
    clf = RobustAttributionClassifier(
        module, attacker=FGSM(eps=0.1, random_start=True, random_state=0),
        masker=LimeMasker(top_k=2, random_state=0), explainer=LimeExplainer(n_samples=n_samples, random_state=0),
        refine_every=2, refine_fraction=0.25, max_epochs=epochs, lr=lr, batch_size=batch_size,
        train_split=None,  # no internal validation split inside CV folds
        verbose=0, random_state=0, **module_kw)
    scorer = make_robust_scorer(PGD(eps=eps, steps=5 if fast else 20, random_state=0))
    return GridSearchCV(clf, grid, cv=2 if fast else 3, scoring=scorer, n_jobs=-1)


def load_data(fast: bool):
    if fast:
        from attribshield.testing import make_images

        return make_images(n=48)
    from attribshield.data import load_digits

    return load_digits()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["dask", "ray"], default="dask")
    parser.add_argument("--scheduler", default=None, help="address of a running dask scheduler")
    parser.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    parser.add_argument("--fast", action="store_true", help="tiny smoke run (also ATTRIBSHIELD_FAST=1)")
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get("ATTRIBSHIELD_FAST") == "1"

    import joblib

    X, y = load_data(fast)
    search = build_search(fast)
    t0 = time.perf_counter()
    if args.backend == "dask":
        from distributed import Client, LocalCluster

        if args.scheduler:
            client, cluster = Client(args.scheduler), None
        else:
            cluster = LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1,
                                   host="127.0.0.1", dashboard_address=None)
            client = Client(cluster)
        try:
            with joblib.parallel_config(backend="dask"):
                search.fit(X, y)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        try:
            with joblib.parallel_config(backend="ray"):
                search.fit(X, y)
        finally:
            ray.shutdown()
    dur = time.perf_counter() - t0

    res = search.cv_results_
    print(f"{'attacker__eps':>14} {'masker__top_k':>14} {'robust acc':>11} {'fit s':>7}")
    for params, score, fit_s in zip(res["params"], res["mean_test_score"], res["mean_fit_time"]):
        print(f"{params['attacker__eps']:>14} {params['masker__top_k']:>14} {score:>11.3f} {fit_s:>7.2f}")
    print(f"best (robust accuracy {search.best_score_:.3f}): {search.best_params_}; "
          f"{len(res['params'])} candidates in {dur:.1f} s on {args.backend}")
    return search


if __name__ == "__main__":  # required: dask and ray start worker processes with spawn
    main()
