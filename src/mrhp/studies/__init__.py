"""Studies over trained systems: floors, comparisons and the paper's tables, one system's experiment, the demo and
its synthetic data."""
