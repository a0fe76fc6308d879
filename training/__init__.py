"""Helpers of the training loop, and what every script shares: config parsing, atomic writes, device choice."""
