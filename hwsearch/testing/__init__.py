"""Test kits for code that plugs into hwsearch: run them in your own test suite (they need pytest)."""

from hwsearch.testing.store_contract import StoreContract

__all__ = ["StoreContract"]
