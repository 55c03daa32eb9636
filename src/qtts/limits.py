"""What one request may put into the prompt: each text part's token limit, and the checks that keep a part
from being empty, invalid Unicode, or able to rewrite the prompt template with its control tokens.

Limits count tokens, not characters: memory and time grow with the prompt's length in tokens, and one
character can be several tokens (an emoji is about four).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from .errors import InputError
from .text import TextTokenizer

# The text to speak: about 10 minutes of speech, as much as the released max_new_tokens (8192 frames) holds.
MAX_INPUT_TOKENS = 2048
# A style or voice description: a paragraph is a few dozen tokens.
MAX_INSTRUCTIONS_TOKENS = 1024
# A reference transcript: the reference clip is at most 60 s, which fast speech says in a few hundred tokens.
MAX_REF_TEXT_TOKENS = 1024
# Checked before tokenizing, so a huge string is refused without building its token list; real text
# averages under 5 characters a token, so only runs of repeated characters come near it.
MAX_CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class PromptLimits:
    """Most tokens each text part of a request may have."""

    input_tokens: int = MAX_INPUT_TOKENS
    instructions_tokens: int = MAX_INSTRUCTIONS_TOKENS
    ref_text_tokens: int = MAX_REF_TEXT_TOKENS

    def __post_init__(self):
        for name in ("input_tokens", "instructions_tokens", "ref_text_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive number of tokens, got {value!r}")


def check_text(tokenizer: TextTokenizer, part: str, text, max_tokens: int) -> None:
    """Raise `InputError` naming `part` unless `text` is a speakable string of at most `max_tokens` tokens
    that contains none of the tokenizer's control tokens."""
    if not isinstance(text, str):
        raise InputError(f"{part} must be a string, got {type(text).__name__}")
    if len(text) > max_tokens * MAX_CHARS_PER_TOKEN:
        raise InputError(f"{part} is {len(text)} characters long; the limit is {max_tokens} tokens (at most "
                         f"{max_tokens * MAX_CHARS_PER_TOKEN} characters). Split it into shorter parts.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{part} is not valid Unicode: it holds a lone surrogate "
                         f"(U+{ord(text[exc.start]):04X}) at character {exc.start}") from None
    if not any(_is_visible(char) for char in text):
        raise InputError(f"{part} is empty: it has no letters, digits, punctuation or symbols")
    for token in tokenizer.added_tokens:
        if token in text:
            # The tokenizer would turn it into the real control token: the text could end its own turn and
            # start another, rewriting the prompt the model was trained on.
            raise InputError(f"{part} contains the control token {token!r}, which plain text may not hold")
    if tokenizer.most_tokens(text) <= max_tokens:  # within the limit, whatever its exact count
        return
    count = len(tokenizer.encode(text))
    if count > max_tokens:
        raise InputError(f"{part} is {count} tokens long; the limit is {max_tokens}. "
                         "Split it into shorter parts and send them one by one.")


def _is_visible(char: str) -> bool:
    # Categories C* (control, format, surrogate, unassigned) and Z* (separators) carry nothing to say.
    return unicodedata.category(char)[0] not in "CZ" and not char.isspace()
