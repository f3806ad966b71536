"""Stands for the Dagster code location: Repository.load must never import it."""

raise RuntimeError("Repository.load imported the definitions module")
