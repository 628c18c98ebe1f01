#!/usr/bin/env python3
"""Python-side compatibility check for the Kasmina host's Oona bus.

Reads what the host published on telemetry.seed.health the way the Python
OonaClient does (XRANGE and XREADGROUP through a group created at 0 with
MKSTREAM, json.loads on every field with the raw string as fallback),
validates every envelope and payload with Pydantic v2 models written from
the contracts spec, then publishes a load_kernel command flattened the way
OonaClient.publish does (model_dump(mode="json"), dicts through json.dumps,
everything else through str()). Speaks RESP over a socket: no redis module.

Usage: oona_compat.py PORT EXPECTED_SIGNALS LAYER_NAME
Prints one JSON object on stdout; exits 1 on any incompatibility.
"""

import json
import socket
import sys
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Dict

from pydantic import BaseModel, ConfigDict, Field


class TopicNames(str, Enum):
    TELEMETRY_SEED_HEALTH = "telemetry.seed.health"
    CONTROL_KASMINA_COMMANDS = "control.kasmina.commands"
    COMPILATION_BLUEPRINT_SUBMITTED = "compilation.blueprint.submitted"
    COMPILATION_KERNEL_READY = "compilation.kernel.ready"
    VALIDATION_KERNEL_CHARACTERIZED = "validation.kernel.characterized"
    SYSTEM_EVENTS_EPOCH = "system.events.epoch"
    INNOVATION_FIELD_REPORTS = "innovation.field_reports"


class OonaMessage(BaseModel):
    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    sender_id: str
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    trace_id: str
    topic: TopicNames
    payload: Dict[str, Any]


class HealthSignal(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, use_enum_values=True,
                              validate_assignment=True, str_strip_whitespace=True, extra="forbid")
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
    timestamp: float


class Redis:
    """The few RESP2 commands this check needs."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode("utf-8")  # decode_responses=True: strict UTF-8
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("unexpected RESP type %r" % kind)


def parse_fields(flat):
    """OonaClient._parse_fields: json.loads every field, raw string on failure."""
    fields = {}
    for k, v in zip(flat[0::2], flat[1::2]):
        try:
            fields[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            fields[k] = v
    return fields


def check(entries, errors, source):
    ok = 0
    for entry_id, flat in entries:
        fields = parse_fields(flat)
        try:
            for key in ("event_id", "sender_id", "trace_id", "timestamp", "topic"):
                if not isinstance(fields.get(key), str):
                    raise ValueError("%s read back as %r, not a string" % (key, type(fields.get(key)).__name__))
            msg = OonaMessage(**fields)
            if msg.topic != TopicNames.TELEMETRY_SEED_HEALTH:
                raise ValueError("topic %s" % msg.topic)
            HealthSignal(**msg.payload)
            ok += 1
        except Exception as e:  # report every failure, keep going
            errors.append("%s %s: %s" % (source, entry_id, e))
    return ok


def main():
    port, expected, layer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    r = Redis(port)
    errors = []
    stream = TopicNames.TELEMETRY_SEED_HEALTH.value

    by_range = check(r.call("XRANGE", stream, "-", "+"), errors, "XRANGE")

    try:
        r.call("XGROUP", "CREATE", stream, "python-compat", "0", "MKSTREAM")
    except RuntimeError as e:
        if "BUSYGROUP" not in str(e):
            raise
    by_group = 0
    while True:
        res = r.call("XREADGROUP", "GROUP", "python-compat", "py-1", "COUNT", 500, "STREAMS", stream, ">")
        if not res:
            break
        for _, entries in res:
            by_group += check(entries, errors, "XREADGROUP")
            for entry_id, _ in entries:
                r.call("XACK", stream, "python-compat", entry_id)

    if by_range != expected or by_group != expected:
        errors.append("validated %d by XRANGE and %d by XREADGROUP, want %d" % (by_range, by_group, expected))

    command = OonaMessage(sender_id="Tamiyo-Controller-1", trace_id="trace-compat-1",
                          topic=TopicNames.CONTROL_KASMINA_COMMANDS,
                          payload={"command": "load_kernel", "layer_name": layer,
                                   "seed_idx": 3, "artifact_id": "kernel-compat-1"})
    flat = []
    for key, value in command.model_dump(mode="json").items():
        flat += [key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    r.call("XADD", command.topic.value, "*", *flat)

    print(json.dumps({"validated_xrange": by_range, "validated_xreadgroup": by_group,
                      "command_event_id": command.event_id, "errors": errors[:20]}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
