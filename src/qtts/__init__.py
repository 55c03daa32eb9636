"""qtts: a fast, faithful inference engine for Qwen3-TTS 12 Hz models.

    tts = qtts.load("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice")
    tts.synthesize("Hello.", speaker="ryan").save("hello.wav")
"""

from .errors import CheckpointError, InputError, QttsError, VoiceError

__version__ = "0.1.0"
__all__ = ["load", "freeze_loaded_heap", "TTS", "Voice", "Audio", "PromptLimits", "QttsError", "CheckpointError",
           "InputError", "VoiceError", "Qwen3TTSModel", "Qwen3TTSTokenizer", "VoiceClonePromptItem"]
_COMPAT = ("Qwen3TTSModel", "Qwen3TTSTokenizer", "VoiceClonePromptItem")


def __getattr__(name):
    # torch and the models load on first use, so `import qtts` (and `qtts --help`) stays fast.
    if name in ("load", "freeze_loaded_heap", "TTS"):
        from . import api

        return getattr(api, name)
    if name == "Voice":
        from .voices import Voice

        return Voice
    if name == "PromptLimits":
        from .limits import PromptLimits

        return PromptLimits
    if name == "Audio":
        from .audio import Audio

        return Audio
    if name in _COMPAT:  # the official qwen-tts surface (see qtts.compat)
        from . import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'qtts' has no attribute {name!r}")
