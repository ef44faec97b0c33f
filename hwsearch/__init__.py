"""hwsearch: hardware-aware subnet extraction from once-for-all supernets.

Importing :mod:`hwsearch` loads only the search-space types; everything that
needs torch, onnxruntime, pymoo or ray is imported from its own module.
"""

import os

from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace, StageSpec

# onnxruntime writes a device id to ~/.cache/Microsoft/DeveloperTools when it is imported unless
# this is set; set it before any module (or Ray worker, which inherits it) imports onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

__all__ = ["ArchConfig", "ArchValidationError", "SearchSpace", "StageSpec", "__version__"]
