"""Scoring prepared data: the one scoring loop and evaluation of a split with per-product metrics."""
