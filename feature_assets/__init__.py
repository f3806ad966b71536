"""The demo feature repository: ad click-through prediction and in-product recommendations.

Add a feature by adding a file here; `definitions.py` turns the whole package into Dagster assets.
"""
