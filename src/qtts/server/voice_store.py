"""The server's cloned voices: by id in memory, or as `<id>.safetensors` files in a folder that is their truth.

With a folder, every server process reading it sees the same voices: a voice uploaded through one replica
is found by the others, and a deleted one is gone for all. Files are written under a hidden temporary name
and renamed into place, so a reader never sees half a voice. A folder can also be filled by hand with files
made by `qtts clone`: each file's stem becomes its id. A small `<id>.json` beside an uploaded voice keeps
the name and creation time it was given.
"""

from __future__ import annotations

import json
import logging
import os
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
    """Voices by id. Used from the event loop only, so it needs no lock.

    With a folder, files are read again only when their modification time changes: a lookup costs one
    `stat`, a listing one directory scan.
    """

    def __init__(self, folder: str | Path | None = None, *, hidden_size: int | None = None,
                 max_voices: int = MAX_VOICES):
        """Use `folder` (created if missing), whose voice files must fit a talker of `hidden_size`; `add`
        refuses voices beyond `max_voices`."""
        self.folder = Path(folder) if folder is not None else None
        self.max_voices = max_voices
        self.hidden_size = hidden_size
        self._voices: dict[str, StoredVoice] = {}
        self._mtimes: dict[str, float] = {}  # id -> modification time of the file its cached voice came from
        self._skipped: dict[str, float] = {}  # id -> modification time of a file already warned about
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.list()  # warn about unusable files at start-up, not at the first request

    @property
    def full(self) -> bool:
        return len(self) >= self.max_voices

    def add(self, voice: Voice, name: str | None = None) -> StoredVoice:
        """Store `voice` under a new id (and write it to the folder, if there is one); the caller checks
        `full` first."""
        voice_id = f"voice_{secrets.token_hex(8)}"
        stored = StoredVoice(voice_id, name or voice_id, int(time.time()), voice)
        if self.folder is not None:
            # The sidecar first: a reader that finds the voice file finds its name too.
            sidecar = json.dumps({"name": stored.name, "created_at": stored.created_at}, ensure_ascii=False)
            self._write(self.folder / f"{voice_id}.json", lambda path: path.write_text(sidecar))
            self._write(self._path(voice_id), voice.save)
            self._mtimes[voice_id] = self._path(voice_id).stat().st_mtime
        self._voices[voice_id] = stored
        return stored

    def get(self, voice_id: str) -> StoredVoice | None:
        if self.folder is None:
            return self._voices.get(voice_id)
        if not _ID.fullmatch(voice_id):  # also what keeps a request's id from naming a path outside the folder
            return None
        return self._read(voice_id)

    def list(self) -> list[StoredVoice]:
        if self.folder is not None:
            on_disk = {path.stem for path in self.folder.glob("*.safetensors") if _ID.fullmatch(path.stem)}
            for voice_id in set(self._voices) - on_disk:
                self._forget(voice_id)
            for voice_id in on_disk:
                self._read(voice_id)
        return sorted(self._voices.values(), key=lambda stored: (stored.created_at, stored.id))

    def delete(self, voice_id: str) -> bool:
        """Forget the voice and remove its files; False when there is no such voice."""
        if self.get(voice_id) is None:
            return False
        self._forget(voice_id)
        if self.folder is not None:
            for suffix in (".safetensors", ".json"):  # the voice first: without it the sidecar means nothing
                (self.folder / f"{voice_id}{suffix}").unlink(missing_ok=True)
        return True

    def __len__(self) -> int:
        return len(self.list())

    def _path(self, voice_id: str) -> Path:
        return self.folder / f"{voice_id}.safetensors"

    def _forget(self, voice_id: str) -> None:
        self._voices.pop(voice_id, None)
        self._mtimes.pop(voice_id, None)

    def _read(self, voice_id: str) -> StoredVoice | None:
        """The voice in its file, from the cache while the file is unchanged; None when gone or unusable."""
        path = self._path(voice_id)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            self._forget(voice_id)
            return None
        if self._mtimes.get(voice_id) == mtime:
            return self._voices[voice_id]
        self._forget(voice_id)
        try:
            voice = Voice.load(path)
            if self.hidden_size is not None:
                voice.check_compatible(self.hidden_size)
        except VoiceError as exc:
            if self._skipped.get(voice_id) != mtime:
                logger.warning("skipping voice file %s: %s", path, exc)
                self._skipped[voice_id] = mtime
            return None
        name, created_at = voice_id, int(mtime)
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
                name, created_at = str(info["name"]), int(info["created_at"])
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring unreadable voice metadata %s: %s", sidecar, exc)
        self._voices[voice_id] = StoredVoice(voice_id, name, created_at, voice)
        self._mtimes[voice_id] = mtime
        return self._voices[voice_id]

    @staticmethod
    def _write(path: Path, write) -> None:
        """`write(temporary path)`, then rename it to `path`: other readers see the whole file or none."""
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # hidden: never a voice id
        try:
            write(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
