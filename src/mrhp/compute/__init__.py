"""Where the work runs: device names and precisions (devices), torchrun processes and their shards (distributed)."""
