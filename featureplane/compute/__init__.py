"""Spark computation: plain PySpark DataFrame/SQL code that runs unchanged on Sail or a cluster."""
