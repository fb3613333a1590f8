"""Modeling: GPT-2 and its variants, the fused head + loss, decoding with a KV cache, the CPU
inference layout, checkpoint files, the Hugging Face format and LoRA adapters.

Imports only the leaves (`gpt2exp.config`, `devices`, `tokenizer`, `atomic`, `errors`, `locks`, `network`)."""
