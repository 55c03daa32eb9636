"""Import the official `qwen-tts` package, our test oracle, on a CPU-only machine.

`import qwen_tts` imports torchaudio unconditionally, but only its 25 Hz path uses it, and no torchaudio
build matches the CPU torch used here. We register an empty `torchaudio.compliance.kaldi` after
transformers is imported (transformers probes torchaudio's spec at import and would fail on a stub).
"""

import importlib.util
import sys
import types

import pytest


def official():
    """Return the `qwen_tts` module, or skip the calling test when the oracle is not installed."""
    if importlib.util.find_spec("qwen_tts") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("the official qwen-tts package (test oracle) is not installed")
    import transformers  # noqa: F401  (must come before the stub)

    if "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        ta = types.ModuleType("torchaudio")
        compliance = types.ModuleType("torchaudio.compliance")
        kaldi = types.ModuleType("torchaudio.compliance.kaldi")
        ta.compliance = compliance
        compliance.kaldi = kaldi
        sys.modules.update(
            {"torchaudio": ta, "torchaudio.compliance": compliance, "torchaudio.compliance.kaldi": kaldi}
        )
    import qwen_tts

    return qwen_tts
