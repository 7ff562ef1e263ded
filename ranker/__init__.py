"""Liquid-universe pairwise stock ranker: data, model, training and metrics (no ray here)."""
