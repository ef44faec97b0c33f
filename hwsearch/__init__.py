"""hwsearch: hardware-aware subnet extraction from once-for-all supernets.

Importing :mod:`hwsearch` loads only the search-space types; everything that
needs torch, onnxruntime, pymoo or ray is imported from its own module.
"""

from hwsearch.space import ArchConfig, ArchValidationError, SearchSpace, StageSpec

__version__ = "0.1.0"

__all__ = ["ArchConfig", "ArchValidationError", "SearchSpace", "StageSpec", "__version__"]
