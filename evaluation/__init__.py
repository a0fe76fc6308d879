"""eval.py's machinery beyond the shared metrics: a fine-tuning task's evaluation (task_eval)."""
