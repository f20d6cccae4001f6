"""Reading HF checkpoints and LoRA adapters lazily, and writing sharded safetensors."""
