"""Predictor quality measures: rank agreement (what a search needs) and error sizes.

A search only needs the predictor to *order* subnets correctly, so Kendall's
tau and Spearman's rho come first; MAPE, RMSE and the share of predictions
within +-5 % / +-10 % of the label say whether predicted numbers can be
quoted to a user (e.g. "fits a 20 ms budget").
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["format_report", "regression_report"]


def regression_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Kendall tau, Spearman rho, MAPE (%), RMSE, within_5 / within_10 (shares in [0, 1]).

    Relative measures assume positive labels (latencies, accuracies); with a
    zero label the relative error of that row is taken against ``|y| + 1e-12``.
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    if y_true.size < 2:
        raise ValueError("a quality report needs at least 2 held-out rows")
    rel = np.abs(y_pred - y_true) / (np.abs(y_true) + 1e-12)
    tau = stats.kendalltau(y_true, y_pred).statistic
    rho = stats.spearmanr(y_true, y_pred).statistic
    return {
        "n": int(y_true.size),
        "tau": float(np.nan_to_num(tau)),
        "rho": float(np.nan_to_num(rho)),
        "mape": float(100.0 * rel.mean()),
        "rmse": float(np.sqrt(np.mean((y_pred - y_true) ** 2))),
        "within_5": float(np.mean(rel <= 0.05)),
        "within_10": float(np.mean(rel <= 0.10)),
    }


def format_report(report: dict[str, float]) -> str:
    """One line for logs and the CLI, e.g. ``n=60 tau=0.912 rho=0.985 MAPE=2.1% ...``."""
    return (
        f"n={int(report['n'])} tau={report['tau']:.3f} rho={report['rho']:.3f} "
        f"MAPE={report['mape']:.2f}% RMSE={report['rmse']:.4g} "
        f"within5={100 * report['within_5']:.1f}% within10={100 * report['within_10']:.1f}%"
    )
