"""Esper contracts written from the spec (shared/seed/contracts-module.md)
with Pydantic v2, for benchmarking against the Go package and for checking
that Python accepts what Go writes. Not the services' own code."""

import time
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field

_FORBID = dict(arbitrary_types_allowed=True, use_enum_values=True,
               validate_assignment=True, extra="forbid")
_STRIP = dict(_FORBID, str_to_lower=False, str_strip_whitespace=True)


class SeedState(str, Enum):
    DORMANT = "dormant"
    GERMINATED = "germinated"
    TRAINING = "training"
    GRAFTING = "grafting"
    FOSSILIZED = "fossilized"
    CULLED = "culled"


class BlueprintState(str, Enum):
    PROPOSED = "proposed"
    COMPILING = "compiling"
    VALIDATING = "validating"
    CHARACTERIZED = "characterized"
    DEPLOYED = "deployed"
    FAILED = "failed"
    ARCHIVED = "archived"


class TopicNames(str, Enum):
    TELEMETRY_SEED_HEALTH = "telemetry.seed.health"
    CONTROL_KASMINA_COMMANDS = "control.kasmina.commands"
    COMPILATION_BLUEPRINT_SUBMITTED = "compilation.blueprint.submitted"
    COMPILATION_KERNEL_READY = "compilation.kernel.ready"
    VALIDATION_KERNEL_CHARACTERIZED = "validation.kernel.characterized"
    SYSTEM_EVENTS_EPOCH = "system.events.epoch"
    INNOVATION_FIELD_REPORTS = "innovation.field_reports"


def _now():
    return datetime.now(UTC)


class Seed(BaseModel):
    model_config = ConfigDict(**_FORBID)
    seed_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    layer_id: int = Field(ge=0)
    position: int = Field(ge=0)
    state: SeedState = SeedState.DORMANT
    blueprint_id: Optional[str] = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    metadata: Dict[str, Any] = Field(default_factory=dict)


class Blueprint(BaseModel):
    model_config = ConfigDict(**_STRIP)
    blueprint_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(min_length=1, max_length=1000)
    state: BlueprintState = BlueprintState.PROPOSED
    architecture: Dict[str, Any]
    hyperparameters: Dict[str, Any] = Field(default_factory=dict)
    performance_metrics: Dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    created_by: str = Field(min_length=1, max_length=100)


class KernelMetadata(BaseModel):
    model_config = ConfigDict(**_FORBID)
    kernel_id: str
    blueprint_id: str
    name: str = Field(min_length=1, max_length=255)
    input_shape: List[int]
    output_shape: List[int]
    parameter_count: int = Field(ge=0)
    device_requirements: List[str] = Field(default_factory=list)
    memory_footprint_mb: float = Field(ge=0.0)
    compilation_target: str = Field(default="torchscript")
    optimization_flags: Dict[str, Any] = Field(default_factory=dict)
    performance_profile: Dict[str, float] = Field(default_factory=dict)
    compatibility_version: str = Field(default="1.0")
    created_at: datetime = Field(default_factory=_now)
    checksum: Optional[str] = None


class CompiledKernel(BaseModel):
    model_config = ConfigDict(**_FORBID)
    kernel_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    blueprint_id: str
    binary_ref: str
    metadata: KernelMetadata
    status: str = Field(default="compiled", pattern=r"^(compiled|validated|deployed|deprecated)$")
    validation_results: Dict[str, Any] = Field(default_factory=dict)
    deployment_stats: Dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=_now)
    last_used_at: Optional[datetime] = None


class TrainingSession(BaseModel):
    model_config = ConfigDict(**_STRIP)
    session_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(min_length=1, max_length=1000)
    training_model_config: Dict[str, Any]
    training_config: Dict[str, Any]
    seeds: List[Seed] = Field(default_factory=list)
    blueprints: List[Blueprint] = Field(default_factory=list)
    status: str = Field(default="initialized", pattern=r"^(initialized|running|paused|completed|failed)$")
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class HealthSignal(BaseModel):
    model_config = ConfigDict(**_STRIP)
    layer_id: int = Field(ge=0)
    seed_id: int = Field(ge=0)
    chunk_id: int = Field(ge=0)
    epoch: int = Field(ge=0)
    activation_variance: float = Field(ge=0.0)
    dead_neuron_ratio: float = Field(ge=0.0, le=1.0)
    avg_correlation: float = Field(ge=-1.0, le=1.0)
    is_ready_for_transition: bool = False
    health_score: float = Field(default=1.0, ge=0.0, le=1.0)
    execution_latency: float = Field(default=0.0, ge=0.0)
    error_count: int = Field(default=0, ge=0)
    active_seeds: int = Field(default=1, ge=0)
    total_seeds: int = Field(default=1, ge=1)
    timestamp: float = Field(default_factory=time.time)


class SystemStatePacket(BaseModel):
    model_config = ConfigDict(**_STRIP)
    epoch: int = Field(ge=0)
    total_seeds: int = Field(ge=0)
    active_seeds: int = Field(ge=0)
    training_loss: float = Field(ge=0.0)
    validation_loss: float = Field(ge=0.0)
    system_load: float = Field(ge=0.0, le=1.0)
    memory_usage: float = Field(ge=0.0, le=1.0)


class AdaptationDecision(BaseModel):
    model_config = ConfigDict(**_STRIP)
    layer_name: str = Field(min_length=1, max_length=255)
    adaptation_type: str = Field(min_length=1, max_length=100,
                                 pattern=r"^(add_seed|remove_seed|modify_architecture|optimize_parameters)$")
    confidence: float = Field(ge=0.0, le=1.0)
    urgency: float = Field(ge=0.0, le=1.0)
    metadata: Dict[str, Any] = Field(default_factory=dict)
    timestamp: float = Field(default_factory=time.time)


class OonaMessage(BaseModel):
    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    sender_id: str
    timestamp: datetime = Field(default_factory=_now)
    trace_id: str
    topic: TopicNames
    payload: Dict[str, Any]


class BlueprintSubmitted(BaseModel):
    blueprint_id: str
    submitted_by: str


MODELS = {m.__name__: m for m in (Seed, Blueprint, KernelMetadata, CompiledKernel, TrainingSession,
                                  HealthSignal, SystemStatePacket, AdaptationDecision, OonaMessage,
                                  BlueprintSubmitted)}
