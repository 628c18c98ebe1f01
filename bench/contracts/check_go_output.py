"""Checks that the Pydantic models accept what Go wrote and re-encode it
to the same JSON: python3 check_go_output.py FILE, where FILE comes from
CONTRACTS_CORPUS_OUT=FILE go test -run Conformance ./contracts/."""

import json
import sys

from pydantic_models import MODELS


def main(path):
    bad = checked = 0
    for line in open(path):
        rec = json.loads(line)
        model = MODELS.get(rec["model"])
        if model is None:  # validate_seed_id has no model
            continue
        checked += 1
        text = json.dumps(rec["json"])
        try:
            again = json.loads(model.model_validate_json(text).model_dump_json())
        except Exception as e:  # noqa: BLE001 - report any refusal
            bad += 1
            print(f"{rec['id']}: Python refused Go's encoding: {e}")
            continue
        if again != rec["json"]:
            bad += 1
            print(f"{rec['id']}: Python re-encoded differently:\n  go: {text}\n  py: {json.dumps(again)}")
    print(f"python accepted {checked - bad} of {checked} Go encodings")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
