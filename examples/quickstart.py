"""Quickstart: adversarial training vs the full method on digits, with a robust accuracy check.

    python examples/quickstart.py            # about a minute on 2 cores
    ATTRIBSHIELD_FAST=1 python examples/quickstart.py   # seconds (CI)
"""
import os

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM, PGD
from attribshield.data import load_digits
from attribshield.evaluation import robust_accuracy
from attribshield.explainers import LimeExplainer
from attribshield.maskers import LimeMasker
from attribshield.models import DigitsNet
from attribshield.regularizers import SpuriousGradientPenalty

FAST = os.environ.get("ATTRIBSHIELD_FAST") == "1"
X, y = load_digits()
n_train = 300 if FAST else 1500
epochs = 2 if FAST else 15
common = dict(max_epochs=epochs, lr=0.05, optimizer__momentum=0.9, batch_size=64, verbose=0, random_state=0)

adv = RobustAttributionClassifier(DigitsNet, attacker=FGSM(eps=0.1, random_start=True, random_state=0), **common)
full = RobustAttributionClassifier(
    DigitsNet, attacker=FGSM(eps=0.1, random_start=True, random_state=0),
    masker=LimeMasker(top_k=3, random_state=0), regularizer=SpuriousGradientPenalty(weight=0.05),
    explainer=LimeExplainer(n_samples=16 if FAST else 64, random_state=0),
    refine_every=1 if FAST else 5, refine_fraction=0.25, mask_weight=0.25, **common)

X_test, y_test = X[1500:], y[1500:]
pgd = PGD(eps=0.1, steps=10 if FAST else 20, restarts=1 if FAST else 2, random_state=0)
for name, clf in [("FGSM-RS", adv), ("full method", full)]:
    clf.fit(X[:n_train], y[:n_train])
    print(f"{name:<12} clean {clf.score(X_test, y_test):.3f}  PGD {robust_accuracy(clf, X_test, y_test, pgd):.3f}")

fig = full.explain(X_test[:6]).plot(X_test[:6])
out = os.path.join("runs", "examples")
os.makedirs(out, exist_ok=True)
fig.savefig(os.path.join(out, "quickstart_explanations.png"))
print("figure:", os.path.join(out, "quickstart_explanations.png"))
