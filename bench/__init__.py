"""Benchmarks; run each as a module from the project folder (see its docstring)."""
