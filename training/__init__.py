"""The trainer: configuration (config), one step (step), checkpoints (state), throughput (meter), the loop (loop)."""
