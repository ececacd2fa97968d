"""The systems that score reviews: the paper's model (paper), the baselines, the registry that builds each by name
(registry), explanations of a score (explain) and self-describing checkpoints (checkpoint)."""
