"""Text cut into consecutive segments at sentence (or clause) boundaries, whole or as it arrives.

Long text is spoken as several requests with the same voice, and live text is committed to speech a
sentence at a time; both need the same cuts. `SegmentBuffer` takes text in pieces of any size and
commits a segment as soon as its end is certain; `iter_segments` is the same on a whole text. A cut is
decided from the characters around it alone, never from how the text was delivered, so the same text
gives the same segments whether it came whole or in deltas.

Lengths are counted in characters, not tokens: a character count of a prefix never changes when more
text arrives, whereas a BPE token count can (a word split across two deltas re-merges), and a cut must
be final when it is made. The default limit is safe for every script: 300 characters are ~20 s of
English speech and ~60 s of Chinese (about one token per character), far below the runaway budget.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Literal

DEFAULT_MAX_CHARS = 300
# How far past a mark the decision looks (closing quotes, spaces, the next letter). A bound makes a
# cut depend on a fixed window of text, which is what lets deltas and whole text agree.
LOOKAHEAD = 16

Granularity = Literal["sentence", "clause", "none"]
# Where a segment that reaches the limit before a committing boundary is cut: at the strongest boundary
# that fits (whole texts: sentences packed up to the limit), or at the last one (live text: every word
# that has ended is certain to belong to the segment, so it can be spoken before the segment ends).
Overflow = Literal["strongest", "last"]

# Boundary strengths: a segment ends at the strongest boundary that keeps it within the limit.
WORD, CLAUSE, SENTENCE = 1, 2, 3
_COMMIT_STRENGTH = {"sentence": SENTENCE, "clause": CLAUSE, "none": SENTENCE + 1}

# Latin-script marks (English, German, French, Spanish, Italian, Portuguese, Russian, Korean) end a
# sentence only before whitespace: "3.14", "U.S.A." inside a word, "1,000" and "10:30" are no cuts.
_LATIN_SENTENCE = frozenset(".!?…")
_LATIN_CLAUSE = frozenset(",;:")
# Full-width marks (Chinese, Japanese) are unambiguous and are not followed by spaces.
_WIDE_SENTENCE = frozenset("。！？｡．")
_WIDE_CLAUSE = frozenset("，、；：､")
_MARKS = _LATIN_SENTENCE | _LATIN_CLAUSE | _WIDE_SENTENCE | _WIDE_CLAUSE
# Closing quotes and brackets stay with the sentence they close ("Hello." she said / 「はい。」と).
_CLOSERS = frozenset("\"'»”’)]}」』）》〉】")
# Closers that never open: they may follow a space, as French writes « Oui. » or a bracket closes late.
_SPACED_CLOSERS = frozenset("»”’)]}」』）》〉】")
# Words that end in "." inside a sentence (titles, "etc."): English, German, French, Spanish, Italian,
# Portuguese and Russian. A single letter (an initial) counts as one too.
_ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof sr jr st vs etc e.g i.e no nr bzw z.b u.a usw hr fr m mme mlle sra srta sig dott
    ca approx dept inc ltd co jan feb mar apr jun jul aug sep sept oct nov dec т.е г ул им др
""".split())
_SPEAKABLE = re.compile(r"\w")


def iter_segments(text: str, *, max_chars: int = DEFAULT_MAX_CHARS, granularity: Granularity = "none",
                  overflow: Overflow = "strongest") -> Iterator[str]:
    """Consecutive segments of `text`, each at most `max_chars` long, cut at the strongest boundary that
    fits: sentence, then clause, then word, then (unpunctuated Chinese or Japanese) anywhere.

    `granularity` "sentence" or "clause" also cuts at every such boundary, however short the segment
    ("none" packs whole sentences up to the limit). Segments are stripped; pieces with nothing to say
    (only punctuation or spaces) stay joined to their neighbour or are dropped at the end.
    """
    buffer = SegmentBuffer(max_chars=max_chars, granularity=granularity, overflow=overflow)
    yield from buffer.feed(text)
    yield from buffer.flush()


class SegmentBuffer:
    """Text arriving in deltas, committed a segment at a time (`feed`), the rest on `flush`."""

    def __init__(self, *, max_chars: int = DEFAULT_MAX_CHARS, granularity: Granularity = "sentence",
                 overflow: Overflow = "strongest"):
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {max_chars}")
        if granularity not in _COMMIT_STRENGTH:
            raise ValueError(f"granularity must be one of {', '.join(_COMMIT_STRENGTH)}, got {granularity!r}")
        if overflow not in ("strongest", "last"):
            raise ValueError(f"overflow must be 'strongest' or 'last', got {overflow!r}")
        self.max_chars = max_chars
        self._commit = _COMMIT_STRENGTH[granularity]
        self._overflow = overflow
        self._text = ""

    @property
    def pending(self) -> str:
        """Text received but not yet committed."""
        return self._text

    def settled(self) -> str:
        """The start of the held text that the next segment is certain to begin with, through the
        whitespace after its last boundary ("" while none is known): what live speech may speak before
        the segment ends. Boundaries found later are later in the text, and a cut is at the first
        committing one or, past the limit, at the strongest (or last) one that fits, so the cut is never
        before the last known boundary of the kind the rule picks."""
        text = self._text
        found, open_mark = _boundaries(text, False, self.max_chars + LOOKAHEAD)
        known = [(end, strength) for end, strength in found if end <= self.max_chars]
        if self._overflow == "strongest" and known:
            strongest = max(strength for _, strength in known)
            known = [(end, strength) for end, strength in known if strength == strongest]
        ends = [end for end, _ in known]
        # With the last rule, marks whose boundary is still open ("Well, " before the next word) are
        # settled where every way the text can go makes a boundary at or after them that fits the limit:
        # the first word of a live answer is spoken at once, not when the second one begins.
        if self._overflow == "last" and open_mark is not None:
            start, least = open_mark
            if least and start + LOOKAHEAD <= self.max_chars and _SPEAKABLE.search(text[:least]):
                ends.append(least)
        if not ends:
            return ""
        end = ends[-1]
        while end < len(text) and text[end].isspace():
            end += 1
        return text[:end]

    def preview(self, delta: str) -> tuple[list[str], str]:
        """What `feed(delta)` would commit and the text it would then hold, without taking `delta`."""
        trial = copy.copy(self)
        return trial.feed(delta), trial.pending

    def feed(self, delta: str) -> list[str]:
        """Add text; return the segments whose end is now certain."""
        self._text += delta
        return self._take(final=False)

    def flush(self) -> list[str]:
        """Commit everything held (the text's end is a boundary); the buffer is empty afterwards."""
        segments = self._take(final=True)
        self._text = ""
        return segments

    def _take(self, final: bool) -> list[str]:
        segments = []
        while True:
            self._text = self._text.lstrip()
            cut = self._next_cut(final)
            if cut is None:
                return segments
            segment, self._text = self._text[:cut].strip(), self._text[cut:]
            if _SPEAKABLE.search(segment):
                segments.append(segment)

    def _next_cut(self, final: bool) -> int | None:
        """Where the first segment of the held text ends, or None while that is not yet certain."""
        text, limit = self._text, self.max_chars
        if not text:
            return None
        known, _ = _boundaries(text, final, limit + LOOKAHEAD)
        commits = [end for end, strength in known if strength >= self._commit]
        if final and (not commits or commits[-1] != len(text)):
            commits.append(len(text))
        if commits and commits[0] <= limit:
            return commits[0]
        if not commits and len(text) <= limit + LOOKAHEAD:
            return None  # every boundary within the limit is not settled yet: wait for more text
        fitting = [(strength, end) for end, strength in known if end <= limit]
        if fitting and self._overflow == "last":
            return fitting[-1][1]
        if fitting:
            strongest = max(strength for strength, _ in fitting)
            return max(end for strength, end in fitting if strength == strongest)
        return limit  # no boundary at all within the limit: cut anyway


def _boundaries(text: str, final: bool, horizon: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """(end, strength) of the boundaries before `horizon`, in order, up to the first one not settled; and
    that one as (where its run of marks starts, the least end its boundary can have, 0 if it may be no
    boundary at all), or None if every boundary before `horizon` is settled.

    A segment ends at `end` (exclusive); the text before it must contain something to say, so a run of
    marks or an opening bracket never becomes a segment of its own. Only characters within LOOKAHEAD
    of a mark decide it, unless the text ends first and is `final`.
    """
    found: list[tuple[int, int]] = []
    # text[:end] has something to say exactly when the first speakable character is before `end` (one
    # search, not one over a copy of the prefix at every space: this runs at every word of a live session)
    first = _SPEAKABLE.search(text)
    speakable_from = len(text) + 1 if first is None else first.start() + 1
    index = 0
    limit = min(len(text), horizon)
    while index < limit:
        char = text[index]
        if char == "\n":
            end = index + 1
            if end >= speakable_from:
                found.append((end, SENTENCE))
            index = end
            continue
        if char.isspace():
            if index >= speakable_from:
                found.append((index, WORD))
            index += 1
            continue
        if char not in _MARKS:
            index += 1
            continue
        end, strength = _mark(text, index, final)
        if end is None:
            return found, (index, strength)  # what this mark means is open, so is every boundary after it
        if strength and end >= speakable_from:
            found.append((end, strength))
        index = max(end, index + 1)
    return found, None


def _mark(text: str, start: int, final: bool) -> tuple[int | None, int]:
    """The boundary made by the run of marks at `start`: (end, strength); strength 0 is no boundary
    (but the run is skipped). End None means the text after it is not known yet; the second value is then
    the least end the boundary can have whatever text comes (after a full-width mark, or a Latin one
    followed by whitespace: a boundary after its closers, or a word boundary there), or 0 when the run may
    still turn out to be inside a word ("3." before "14")."""
    window = text[start:start + LOOKAHEAD]
    settled = final or len(window) == LOOKAHEAD  # the window is all this decision will ever see
    run = 0
    while run < len(window) and window[run] in _MARKS:
        run += 1
    marks = window[:run]
    sentence = any(mark in _LATIN_SENTENCE or mark in _WIDE_SENTENCE for mark in marks)
    strength = SENTENCE if sentence else CLAUSE
    position = run
    while position < len(window) and window[position] in _CLOSERS:
        position += 1
    if marks[-1] in _WIDE_SENTENCE or marks[-1] in _WIDE_CLAUSE:
        if position == len(window) and not settled:
            return None, start + position  # a closing quote may still follow
        if position > run and strength == SENTENCE:
            strength = CLAUSE  # 「はい。」と言った / “好。”他说: a quoted sentence inside a sentence
        return start + position, strength
    # Latin marks: a space must follow, then (for a sentence) something that does not continue it.
    if position == len(window):
        return (start + position, strength) if settled else (None, 0)
    if not window[position].isspace():
        return start + position, 0  # "3.14", "U.S.", "a,b": inside a word
    after = position
    while after < len(window) and window[after].isspace():
        after += 1
    if after < len(window) and window[after] in _SPACED_CLOSERS:
        # « Oui. » : the closer belongs to this sentence; decide after it.
        end, closed = _mark_after_closer(text, start, start + after, strength, final)
        return (end, closed) if end is not None else (None, start + position)
    if after == len(window):
        return (start + position, strength) if settled else (None, start + position)
    if strength == SENTENCE and _continues(text, start, marks, window[after]):
        return start + position, 0
    return start + position, strength


def _mark_after_closer(text: str, start: int, closer: int, strength: int, final: bool) -> tuple[int | None, int]:
    end = closer
    while end < len(text) and end < start + LOOKAHEAD and text[end] in _CLOSERS:
        end += 1
    if end == len(text) and not final and end < start + LOOKAHEAD:
        return None, 0
    return end, strength


def _continues(text: str, start: int, marks: str, following: str) -> bool:
    """Whether a Latin sentence mark is not a sentence end: the next word starts in lower case ("e.g. this",
    "Wait... what"), or a single "." ends an abbreviation or an initial ("Dr. Smith", "J. Smith")."""
    if following.islower():
        return True
    if marks != ".":
        return False
    word = re.search(r"[\w.]*$", text[:start]).group(0).lower()
    return len(word) == 1 and word.isalpha() or word in _ABBREVIATIONS
