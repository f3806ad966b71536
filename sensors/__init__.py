"""Dagster sensors (new source data, apply → backfill, monitoring alerts); filled by later work."""
