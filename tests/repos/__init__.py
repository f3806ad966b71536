"""Tiny feature repositories that `tests/test_repository.py` loads as `tests.repos.<name>`."""
