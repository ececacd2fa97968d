"""Losses (what training minimises) and metrics (what evaluation measures): pure functions over padded
`[B, R]` tensors with boolean masks."""
