"""Reading and writing checkpoints: safetensors, LoRA adapters, the model pool, packaged models."""
