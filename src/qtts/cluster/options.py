"""What a qtts Ray Serve application is made of: the server's own options plus how many replicas run it.

The same fields are `qtts serve`'s flags and the `args:` of a Ray Serve config file, so both paths build the
very same application.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..server.app import DEFAULT_MAX_QUEUE, FIRST_AUDIO_TARGET

# Requests in progress per replica that autoscaling aims for: once the engine batches, several requests
# share each frame, so a replica is busy, not overloaded, with a handful of them.
# Half of a replica's engine rows: scale out before a replica's batch is full and its queue fills.
DEFAULT_TARGET_ONGOING_REQUESTS = 32


class ServeArgs(BaseModel):
    """Options of `build_app`; unknown keys are refused, so a misspelt config key is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="checkpoint folder or Hugging Face repo id; every replica loads it")
    device: str | None = Field(None, description="cpu or cuda (default: the GPU Ray gives the replica, else cpu)")
    served_model_name: str | None = Field(None, description="model id clients send (default: model)")
    voices_dir: str | None = Field(None, description="voice folder every replica reads (Base models)")
    max_batch: int = Field(64, ge=1, le=1024, description="requests one replica's engine runs at once")
    codec_dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="what the codec decoder computes in (default: the talker's, bfloat16 on a GPU)")
    max_queue: int = Field(DEFAULT_MAX_QUEUE, ge=0, description="requests that may wait in one replica")
    first_audio_target: float = Field(FIRST_AUDIO_TARGET, gt=0, description="seconds a request may be expected "
                                      "to wait for a row in its replica before it is answered 503")
    replicas: int = Field(1, ge=1, description="replicas to run (without autoscale)")
    autoscale: str | None = Field(None, description="MIN:MAX replicas, scaled on ongoing requests")
    target_ongoing_requests: float = Field(DEFAULT_TARGET_ONGOING_REQUESTS, gt=0)
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica (default: 1 if the cluster has any)")

    @field_validator("autoscale")
    @classmethod
    def _min_max(cls, value: str | None) -> str | None:
        if value is not None:
            replica_range(value)
        return value

    @model_validator(mode="after")
    def _replicas_or_autoscale(self) -> ServeArgs:
        if self.autoscale is not None and "replicas" in self.model_fields_set:
            raise ValueError("give replicas or autoscale, not both: autoscale decides how many replicas run")
        return self


def replica_range(value: str) -> tuple[int, int]:
    """`"MIN:MAX"` -> (MIN, MAX), with 0 <= MIN <= MAX and MAX >= 1; ValueError naming the problem."""
    low, colon, high = value.partition(":")
    try:
        if not colon:
            raise ValueError
        bounds = int(low), int(high)
    except ValueError:
        raise ValueError(f"autoscale {value!r} is not MIN:MAX (two whole numbers, for example 1:4)") from None
    if not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise ValueError(f"autoscale {value!r} needs 0 <= MIN <= MAX and MAX >= 1")
    return bounds
