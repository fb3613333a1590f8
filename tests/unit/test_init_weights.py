"""`model.init` weights reach training: a fine-tune from an HF folder starts at that model's own
loss, as transformers computes it, not at a fresh model's."""
