"""Plain PyTorch modules of Qwen3-TTS; parameter names equal the official checkpoint keys."""
