"""What only serve.py needs: the continuous-batching engine, request parsing, monitoring, the
playground page; and modeling_mini_lm.py, the file export.py ships with a model (no project imports)."""
