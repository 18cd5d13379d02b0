"""``python -m lib.experiment.worker_main CALL.json``: one call of lib.experiment.workers.call_in_workers
in a worker process. The call file names one of the functions below (lib.experiment.workers.WORKER_FUNCTIONS),
never an arbitrary one; the return value is written as JSON to the file the call names (by rank 0, when
torchrun started the worker as several processes)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lib.experiment import dose, related_sweep, runs, sweep
from lib.infra.checkpoint import atomic_write_text

FUNCTIONS = {f"{f.__module__}:{f.__name__}": f
             for f in (runs.train_job, sweep.group_job, related_sweep.phase_job, dose.seed_job)}


def main(call_file: str) -> int:
    call = json.loads(Path(call_file).read_text())
    if call.get("function") not in FUNCTIONS:
        print(f"error: {call_file} names {call.get('function')!r}, not one of {', '.join(FUNCTIONS)}", file=sys.stderr)
        return 2
    result = FUNCTIONS[call["function"]](**call["kwargs"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank made the call; rank 0 answers it
        atomic_write_text(call["out"], json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
