"""Drop-in for code written against the official `qwen-tts` package: change the import, keep the code.

    from qtts import Qwen3TTSModel          # was: from qwen_tts import Qwen3TTSModel
    model = Qwen3TTSModel.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", device_map="cuda:0")
    wavs, sr = model.generate_custom_voice(text="Hello.", speaker="Ryan", language="English")
"""

from .model import Qwen3TTSModel, VoiceClonePromptItem
from .tokenizer import EncodedAudio, Qwen3TTSTokenizer

__all__ = ["Qwen3TTSModel", "Qwen3TTSTokenizer", "VoiceClonePromptItem", "EncodedAudio"]
