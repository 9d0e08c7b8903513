"""Training: data, tokenizers, optimizers, schedules, checkpoints."""
