"""Find a checkpoint (local folder or Hugging Face repo id), validate it, and load its tensors into modules.

The official layout is read as published: no conversion step. Validation reads only the safetensors
headers, so a wrong or truncated file is reported by tensor name before any weight is copied.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import GenerationConfig, SpeechTokenizerConfig, TTSConfig, read_json
from .errors import CheckpointError, InputError
from .sampling import SamplingParams

MODEL_FILE = "model.safetensors"
SPEECH_TOKENIZER_DIR = "speech_tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# What a TTS repo needs; other files (README, preprocessor configs, ModelScope stubs) are not read.
_HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "tokenizer.json",
    f"{SPEECH_TOKENIZER_DIR}/*.json",
    f"{SPEECH_TOKENIZER_DIR}/*.safetensors",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder and its parsed configs."""

    path: Path
    name: str
    config: TTSConfig
    generation: GenerationConfig
    speech_tokenizer: SpeechTokenizerConfig

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def speech_tokenizer_file(self) -> Path:
        return self.path / SPEECH_TOKENIZER_DIR / MODEL_FILE


def resolve(model: str | os.PathLike) -> tuple[Path, str]:
    """Return (local folder, display name) for a folder path or a Hugging Face repo id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), str(model)
    text = str(model)
    if path.exists():
        raise CheckpointError(f"{text} is a file; pass the checkpoint folder that holds config.json")
    if not _REPO_ID.match(text):
        raise CheckpointError(
            f"{text!r} is neither an existing folder nor a Hugging Face repo id like "
            "'Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice'"
        )
    return _download(text), text


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a hard dependency
        raise CheckpointError(f"loading {repo_id} from the hub needs huggingface_hub: {e}") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id} is not in the local Hugging Face cache and cannot be downloaded "
            "(offline mode or no network). Download it once with network access, or pass a local folder."
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id} was not found on the Hugging Face hub (or needs a login)") from None
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise CheckpointError(f"downloading {repo_id} failed: {type(e).__name__}: {e}") from None


def open_checkpoint(model: str | os.PathLike) -> Checkpoint:
    """Resolve `model` and parse its config files; tensors are not read yet."""
    path, name = resolve(model)
    config = TTSConfig.from_dict(read_json(path / "config.json"))
    gen_path = path / "generation_config.json"
    generation = GenerationConfig.from_dict(read_json(gen_path)) if gen_path.exists() else GenerationConfig()
    _check_generation(generation, config, gen_path)
    speech = SpeechTokenizerConfig.from_dict(read_json(path / SPEECH_TOKENIZER_DIR / "config.json"))
    for required in (MODEL_FILE, *TOKENIZER_FILES, f"{SPEECH_TOKENIZER_DIR}/{MODEL_FILE}"):
        if not (path / required).is_file():
            raise CheckpointError(f"{path} has no {required}; is the download complete?")
    return Checkpoint(path=path, name=name, config=config, generation=generation, speech_tokenizer=speech)


def _check_generation(generation: GenerationConfig, config: TTSConfig, path: Path) -> None:
    """The sampling defaults are every request's defaults: a bad one is the checkpoint's fault, said now,
    not a 400 blaming each client later."""
    try:
        SamplingParams.from_generation_config(generation)
    except InputError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    positions = config.talker_config.max_position_embeddings
    if generation.max_new_tokens >= positions:
        raise CheckpointError(f"{path}: max_new_tokens {generation.max_new_tokens} leaves no room for the prompt "
                              f"in the talker's {positions} positions (config.json max_position_embeddings)")


# The parts of a checkpoint by tensor-name prefix: model.safetensors, then speech_tokenizer/model.safetensors.
PARTS = (("talker", "model", "talker."), ("speaker encoder", "model", "speaker_encoder."),
         ("codec encoder", "speech", "encoder."), ("codec decoder", "speech", "decoder."))


def parameter_counts(ckpt: Checkpoint) -> dict[str, int]:
    """Parameters of each part the checkpoint holds, counted from the safetensors headers alone."""
    shapes = {"model": tensor_shapes(ckpt.model_file), "speech": tensor_shapes(ckpt.speech_tokenizer_file)}
    counts = {}
    for part, file, prefix in PARTS:
        total = sum(math.prod(shape) for name, shape in shapes[file].items() if name.startswith(prefix))
        if total:
            counts[part] = total
    return counts


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, from its header only."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{file} is not a readable safetensors file ({e}); re-download it") from None


def check_shapes(file: Path, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise a CheckpointError naming every missing, unexpected or wrongly shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if not (missing or unexpected or wrong):
        return

    def listing(names, describe=lambda k: k):
        shown = ", ".join(describe(k) for k in names[:8])
        return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {listing(unexpected)}")
    if wrong:
        problems.append(
            f"{len(wrong)} tensor(s) with the wrong shape: "
            + listing(wrong, lambda k: f"{k} is {list(found[k])}, config says {list(expected[k])}")
        )
    raise CheckpointError(
        f"{file} does not match its config.json: " + "; ".join(problems)
        + ". Is this file from a different model size or variant?"
    )


@contextlib.contextmanager
def _no_random_init():
    """Skip nn.init while building modules whose every weight is about to be overwritten.

    Random init of ~2 B parameters costs seconds on a CPU; the checkpoint replaces it anyway.
    """
    names = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "trunc_normal_", "zeros_", "ones_", "constant_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def build_empty(factory, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Call `factory(device=..., dtype=...)` with random init skipped; returns the module in eval mode."""
    with _no_random_init():
        module = factory(device=device, dtype=dtype)
    return module.eval()


def load_weights(module: nn.Module, file: Path, prefix: str) -> None:
    """Copy the tensors under `prefix` in `file` into `module`, after checking names and shapes."""
    all_shapes = tensor_shapes(file)
    found = {k[len(prefix):]: s for k, s in all_shapes.items() if k.startswith(prefix)}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_shapes(file, {prefix + k: s for k, s in found.items()}, {prefix + k: s for k, s in expected.items()})
    target = module.state_dict()
    try:
        with safe_open(str(file), framework="pt") as f:
            for key in expected:
                tensor = f.get_tensor(prefix + key)
                if not tensor.is_floating_point() and target[key].is_floating_point():
                    raise CheckpointError(f"{file}: {prefix + key} holds {tensor.dtype}, expected floats")
                target[key].copy_(tensor.to(target[key].dtype))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{file} could not be read ({e}); the file may be truncated, re-download it") from None
    for key, value in target.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{file}: {prefix + key} contains NaN or infinite values; the file is corrupt")


def split_prefixes(file: Path, allowed: tuple[str, ...]) -> None:
    """Reject tensors that belong to none of the modules qtts builds (e.g. a mismatched variant)."""
    stray = sorted(k for k in tensor_shapes(file) if not k.startswith(allowed))
    if stray:
        raise CheckpointError(
            f"{file} holds {len(stray)} tensor(s) outside {', '.join(allowed)}: "
            + ", ".join(stray[:8]) + ". Does config.json's tts_model_type match the weights?"
        )
