"""Test kits for code that plugs into hwsearch: run them in your own test suite (they need pytest)."""

import pytest

# pytest rewrites the asserts of test modules only: without this a kit's failure read "AssertionError" alone.
pytest.register_assert_rewrite("hwsearch.testing.store_contract")

from hwsearch.testing.store_contract import StoreContract  # noqa: E402  (after the rewrite is registered)

__all__ = ["StoreContract"]
