"""The Feast repository (feature_store.yaml, definitions.py) and the tooling that drives it."""
