"""Latency and accuracy predictors over encoded subnets (no torch, ray or web frameworks).

* :mod:`predictors.features` - depth-masked one-hot codes and an analytic per-stage cost model
  (compute, operator-count and memory-traffic terms);
* :mod:`predictors.latency` / :mod:`predictors.accuracy` - linear base + XGBoost residual,
  bootstrap spread, quality measured on every fit, JSON persistence with compatibility checks;
  accuracy through a saturating link with a CV-calibrated spread;
* :mod:`predictors.fewshot` - a new device from 5-20 measurements: transfer from other
  devices' predictors, from scratch, or a blend, whichever cross-validates best on the shots;
* :mod:`predictors.dataset`, :mod:`predictors.metrics` - labelled rows and quality reports.
"""
