"""The machinery behind serve.py: continuous-batching engine, request parsing, the playground page."""
