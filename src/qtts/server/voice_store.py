"""The server's cloned voices: kept in memory by id, and as `<id>.safetensors` files in an optional folder.

A folder can also be filled by hand with files made by `qtts clone`: each file's stem becomes its id.
A small `<id>.json` beside an uploaded voice keeps the name and creation time it was given.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import VoiceError
from ..voices import Voice

logger = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # ids are file names: no separators, no leading dot
# An in-context voice holds up to 60 s of reference codes (about 100 KB), so a thousand fit in ~100 MB.
MAX_VOICES = 1000


@dataclass(frozen=True)
class StoredVoice:
    id: str
    name: str
    created_at: int  # Unix seconds
    voice: Voice


class VoiceStore:
    """Voices by id. Used from the event loop only, so it needs no lock."""

    def __init__(self, folder: str | Path | None = None, *, hidden_size: int | None = None,
                 max_voices: int = MAX_VOICES):
        """Load every voice file in `folder` (created if missing) that fits a talker of `hidden_size`;
        `add` refuses voices beyond `max_voices` (files already in the folder are all loaded)."""
        self.folder = Path(folder) if folder is not None else None
        self.max_voices = max_voices
        self._voices: dict[str, StoredVoice] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.folder.glob("*.safetensors")):
                self._load(path, hidden_size)

    @property
    def full(self) -> bool:
        return len(self._voices) >= self.max_voices

    def add(self, voice: Voice, name: str | None = None) -> StoredVoice:
        """Store `voice` under a new id (and write it to the folder, if there is one); the caller checks
        `full` first."""
        voice_id = f"voice_{secrets.token_hex(8)}"
        stored = StoredVoice(voice_id, name or voice_id, int(time.time()), voice)
        if self.folder is not None:
            voice.save(self.folder / f"{voice_id}.safetensors")
            (self.folder / f"{voice_id}.json").write_text(
                json.dumps({"name": stored.name, "created_at": stored.created_at}, ensure_ascii=False)
            )
        self._voices[voice_id] = stored
        return stored

    def get(self, voice_id: str) -> StoredVoice | None:
        return self._voices.get(voice_id)

    def list(self) -> list[StoredVoice]:
        return sorted(self._voices.values(), key=lambda stored: (stored.created_at, stored.id))

    def delete(self, voice_id: str) -> bool:
        """Forget the voice and remove its files; False when there is no such voice."""
        if self._voices.pop(voice_id, None) is None:
            return False
        if self.folder is not None:
            for suffix in (".safetensors", ".json"):
                (self.folder / f"{voice_id}{suffix}").unlink(missing_ok=True)
        return True

    def __len__(self) -> int:
        return len(self._voices)

    def _load(self, path: Path, hidden_size: int | None) -> None:
        voice_id = path.stem
        if not _ID.fullmatch(voice_id):
            logger.warning("skipping voice file %s: its name is not a valid voice id (letters, digits, _ . -)", path)
            return
        try:
            voice = Voice.load(path)
            if hidden_size is not None:
                voice.check_compatible(hidden_size)
        except VoiceError as exc:
            logger.warning("skipping voice file %s: %s", path, exc)
            return
        name, created_at = voice_id, int(path.stat().st_mtime)
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
                name, created_at = str(info["name"]), int(info["created_at"])
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring unreadable voice metadata %s: %s", sidecar, exc)
        self._voices[voice_id] = StoredVoice(voice_id, name, created_at, voice)
