"""Speech for text that arrives while it is spoken: one engine request whose text track grows.

Qwen3-TTS's streaming layout (`non_streaming_mode=False`) puts the first text token in the prompt and feeds
one more with each frame, so the model itself speaks text as it comes. A `TextStream` starts its request
as soon as the first token is certain and passes each later token to the engine as it becomes certain; a
row that has spoken all the text it has waits in the running batch (`Frame.step`) until more comes or the
text ends.

A token is certain once the word it belongs to has ended: the tokenizer's pre-split ends a run of letters
(or a digit) where a space or punctuation follows, and starts the next piece there, so the tokens of the
text up to such a point are the first tokens of any text that continues it (checked each time; if a piece
of text ever breaks that, the rest waits for the end). Spaces end Latin words and the punctuation before
them; punctuation ends Chinese and Japanese words, which have no spaces. The same text given whole or in
pieces therefore gives the same tokens, the same track, and the same codes. Whitespace at the very end of
the text is not spoken.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable

import numpy as np
import torch

from .engine.requests import Generation
from .engine.scheduler import Scheduler
from .errors import InputError
from .prompt import PromptBuilder, PromptPlan
from .sampling import SamplingParams


class TextStream:
    """`feed(text)` as it is written, `end()` once; iterate for audio chunks (float32, 24 kHz), or
    `result()`; `cancel()`. `start(text, open_text)` builds the request's prompt plan; `check(text)` raises
    `InputError` for text that may not be spoken (limits, control tokens), run on all of it at each step.
    Not `incremental`: the text is only gathered until `end()`."""

    def __init__(self, engine: Scheduler, prompts: PromptBuilder, start: Callable[[str, bool], PromptPlan],
                 params: SamplingParams, check: Callable[[str], None], loop=None, incremental: bool = True):
        self._engine, self._prompts, self._start = engine, prompts, start
        self._params, self._check, self._loop = params, check, loop
        # False for an ICL voice: its layout puts the whole text beside the reference frames in the
        # prompt, so the request starts at end() with all of it.
        self.incremental = incremental
        self._text = ""
        self._ids: list[int] = []  # tokens given to the request so far
        self._diverged = False  # a piece broke the prefix rule: the rest goes at the end
        self._ended = False
        self._generation: Generation | None = None
        self._started = threading.Event()
        self.finished = None

    @property
    def text(self) -> str:
        return self._text

    @property
    def generation(self) -> Generation | None:
        """The engine request, once the first token was certain (None before, or if cancelled before)."""
        return self._generation

    def feed(self, text: str) -> None:
        """More of the text (any size). Raises `InputError` once the text has ended, and for text that may
        not be spoken (limits, control tokens); a refused piece changes nothing."""
        if self._ended:
            raise InputError("this text has ended: start another utterance")
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        whole = self._text + text
        self._check(whole)
        cut = certain_end(whole)
        if cut > 0 and self.incremental and not self._diverged:
            self._give(whole[:cut], final=False)
        self._text = whole

    def end(self) -> None:
        """The text is complete: the request speaks the rest and then ends as any request does."""
        if self._ended:
            return
        if not self._text.strip():
            raise InputError("text to speak must be a non-empty string")
        self._give(self._text.rstrip(), final=True)  # checked by feed() as it came
        self._ended = True

    def _give(self, text: str, final: bool) -> None:
        with torch.inference_mode():
            self._give_tokens(text, final)

    def _give_tokens(self, text: str, final: bool) -> None:
        if not text.strip():
            return
        ids = self._prompts.text_ids(text)
        if self._generation is None:
            if not ids:
                return
            plan = self._start(text, not final)
            self._generation = self._engine.submit(plan, self._params, text_open=not final, loop=self._loop)
            self._ids = ids
            self._started.set()
            return
        if ids[: len(self._ids)] != self._ids:
            if not final:
                self._diverged = True
                return
            # best effort: the tokens given stay spoken; the whole text's tokens after as many follow
        new = ids[len(self._ids):]
        if not new and not final:
            return
        vectors = self._prompts.text_vectors(new) if new else None
        if final:
            end = self._prompts.end_of_text()
            vectors = end if vectors is None else torch.cat([vectors, end])
        self._engine.extend_text(self._generation, vectors, tokens=len(new), final=final)
        self._ids = ids

    def cancel(self) -> None:
        self._ended = True
        if self._generation is not None:
            self._generation.cancel()
        self._started.set()

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        self._started.wait()
        if self._generation is None:  # cancelled before any text
            raise StopIteration
        try:
            return next(self._generation)
        except StopIteration:
            self.finished = self._generation.finished
            raise

    def result(self):
        """Every remaining audio chunk and the `Finished` event (blocks until the text has ended and been
        spoken)."""
        chunks = list(self)
        return chunks, self.finished


def certain_end(text: str) -> int:
    """Where the certain part of a text still being written ends (0: nothing is certain yet): before its
    last space or punctuation mark that follows a letter or digit, or after a run of punctuation that a
    space follows. The pre-split of the text up to there is the start of the pre-split of any text that
    continues it: a punctuation mark may open the next word's piece when a letter follows it at once
    (Chinese and Japanese commas do), and a line break may join the run before it, but a space ends the
    run, so "Well, " settles "Well," and not only "Well"."""
    for index in range(len(text) - 1, 0, -1):
        char, before = text[index], text[index - 1]
        if _separates(char) and not _separates(before):
            return index
        if char.isspace() and char not in "\r\n" and _separates(before) and not before.isspace():
            return index
    return 0


def _separates(char: str) -> bool:
    """Whitespace or punctuation (anything but a letter, digit or mark): where a word ends."""
    return unicodedata.category(char)[0] not in "LNM"
