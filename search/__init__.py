"""Staged hyperparameter search for the ranker on Ray Tune."""
