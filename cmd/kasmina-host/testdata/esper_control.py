#!/usr/bin/env python3
"""Esper's side of the control plane, for the host's end-to-end test.

publish PORT < payloads.json
    Publishes each payload (a JSON list of command payloads) on
    control.kasmina.commands exactly as esperlite's OonaClient.publish writes
    an OonaMessage: model_dump(mode="json"), dicts and lists through
    json.dumps, everything else through str(). Prints the event ids, in
    order, as a JSON list.

read PORT
    Reads telemetry.seed.health the way OonaClient.consume does (json.loads
    on every field, the raw string when that fails), validates every
    envelope as an OonaMessage, every payload without event_type as a
    HealthSignal (extra members forbidden), and every payload with one as
    an outcome event (the members esperlite's KasminaLayer events have, and
    the command's ids). Prints {"signals": N, "outcomes": {command_event_id:
    {sender_id: [payload, ...]}}, "traces": {command_event_id: trace_id},
    "errors": [...]} and exits 1 on any error.

Pydantic v2 and the standard library only (the RESP client and the models
are the Oona compatibility check's, runtime/oona/testdata/oona_compat.py).
"""

import json
import os
import sys
from typing import Optional

from pydantic import BaseModel, ConfigDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "runtime", "oona", "testdata"))
from oona_compat import HealthSignal, OonaMessage, Redis, TopicNames, parse_fields  # noqa: E402


class OutcomeEvent(BaseModel):
    """The members an outcome event must have; others are allowed."""

    model_config = ConfigDict(extra="allow")
    event_type: str
    layer_name: str
    seed_idx: int
    artifact_id: str
    command_event_id: str
    command_id: Optional[str] = None
    failure_reason: Optional[str] = None
    error_class: Optional[str] = None
    timestamp: float


FAILURES = {"kernel_load_failure", "command_failed"}


def publish(port, payloads):
    r = Redis(port)
    ids = []
    for payload in payloads:
        msg = OonaMessage(sender_id="Tamiyo-Controller-1", trace_id="trace-" + str(len(ids)),
                          topic=TopicNames.CONTROL_KASMINA_COMMANDS, payload=payload)
        flat = []
        for key, value in msg.model_dump(mode="json").items():
            flat += [key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
        r.call("XADD", msg.topic.value, "*", *flat)
        ids.append(msg.event_id)
    print(json.dumps(ids))


def read(port):
    r = Redis(port)
    errors, outcomes, traces, signals = [], {}, {}, 0
    for entry_id, flat in r.call("XRANGE", TopicNames.TELEMETRY_SEED_HEALTH.value, "-", "+") or []:
        fields = parse_fields(flat)
        try:
            for key in ("event_id", "sender_id", "trace_id", "timestamp", "topic"):
                if not isinstance(fields.get(key), str):
                    raise ValueError("%s read back as %r, not a string" % (key, type(fields.get(key)).__name__))
            msg = OonaMessage(**fields)
            if "event_type" not in msg.payload:
                HealthSignal.model_validate(msg.payload)
                signals += 1
                continue
            ev = OutcomeEvent.model_validate(msg.payload)
            if ev.event_type in FAILURES and not ev.failure_reason:
                raise ValueError("a failure event without failure_reason")
            outcomes.setdefault(ev.command_event_id, {}).setdefault(msg.sender_id, []).append(msg.payload)
            traces[ev.command_event_id] = msg.trace_id
        except Exception as e:  # report every failure, keep going
            errors.append("%s: %s" % (entry_id, e))
    print(json.dumps({"signals": signals, "outcomes": outcomes, "traces": traces, "errors": errors[:20]}))
    sys.exit(1 if errors else 0)


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "publish":
        publish(port, json.load(sys.stdin))
    else:
        read(port)


if __name__ == "__main__":
    main()
