"""AutoFormer-style vision transformers (tiny, small, base) and spaces of their layout."""
