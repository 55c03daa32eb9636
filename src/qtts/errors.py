"""The one exception family qtts raises: every message says what was wrong and what to do."""


class QttsError(Exception):
    """Base class of every error qtts raises on purpose."""


class CheckpointError(QttsError):
    """A checkpoint is missing, unreadable, corrupt, or does not match its config."""


class InputError(QttsError, ValueError):
    """A request argument (text, language, speaker, audio, sampling value) is invalid."""


class VoiceError(QttsError):
    """A voice file is unreadable or was made for a different model."""
