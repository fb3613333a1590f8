"""gpt2exp: train, sample and sweep GPT-2 models from Hydra configs."""
