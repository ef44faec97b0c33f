"""Latency and accuracy predictors over encoded subnets (no torch, ray or web frameworks).

* :mod:`predictors.features` - depth-masked one-hot codes and the family's analytic per-stage
  cost model (compute, operator-count and memory-traffic terms, ``space.layout.costs``);
* :mod:`predictors.latency` - linear base + XGBoost residual, bootstrap spread, quality
  measured on every fit, JSON persistence with compatibility checks;
* :mod:`predictors.accuracy` - a CV-weighted blend of resolution-aware ridges and trees under a
  saturating ceiling, with a spread calibrated on out-of-fold errors;
* :mod:`predictors.fewshot` - a new device from 5-20 measurements: transfer from other
  devices' predictors and from scratch, averaged with weights from CV on the shots;
* :mod:`predictors.dataset`, :mod:`predictors.metrics` - labelled rows and quality reports.
"""
