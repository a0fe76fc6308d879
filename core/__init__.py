"""What every script shares: configuration parsing (configurator), atomic writes (atomic), device and
precision choice (hardware), checkpoint files (checkpoint) and loading one for inference (inference),
the BPE tokenizer (tokenizer), metrics, a task's prompt template (tasks), text streaming, experiment
tracking and the CPU allocator setting (cpu_memory). It imports model.py and fused_kernels only."""
