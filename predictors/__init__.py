"""Latency and accuracy predictors over encoded subnets (no torch, ray or web frameworks).

* :mod:`predictors.features` - depth-masked one-hot codes and an analytic per-stage cost model;
* :mod:`predictors.latency` / :mod:`predictors.accuracy` - linear base + XGBoost residual,
  bootstrap spread, quality measured on every fit, JSON persistence with compatibility checks;
* :mod:`predictors.fewshot` - a new device from ~20 measurements via other devices' predictors;
* :mod:`predictors.dataset`, :mod:`predictors.metrics` - labelled rows and quality reports.
"""
