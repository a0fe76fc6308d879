"""What only train.py needs: batches, optimizers and schedules, DDP ranks, loggers, a run's checkpoints."""
