"""Child-process entry point: one cell from a JSON spec on stdin, its record on stdout.

With a memory budget, a watchdog thread ends the cell as soon as memory above the
baseline crosses the budget, printing an ``oom`` record first. The worker dies with the
process that launched it (``bench.launch.lifeline``), armed before torch is imported. With
``$VIPERBENCH_THREADS`` set, torch runs on that many threads.
"""

from __future__ import annotations

import json
import os
import sys

from bench.launch.lifeline import die_with_parent


def _emit(record: dict) -> None:
    from bench.launch.process import RECORD_PREFIX

    sys.stdout.write(RECORD_PREFIX + json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    die_with_parent()
    from bench.launch.process import THREADS_ENV

    if os.environ.get(THREADS_ENV):
        import torch

        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    from bench.errors import UserError
    from bench.measure.meters import BudgetWatchdog, MemoryMeter
    from bench.records import environment, make_record
    from bench.measure.runner import run_cell
    from bench.spec import check_runnable, make_spec

    try:
        spec = make_spec(json.loads(sys.stdin.read()))
    except (UserError, ValueError) as exc:
        print(f"viperbench worker: {exc}", file=sys.stderr)
        return 2
    try:
        check_runnable(spec)
    except UserError as exc:
        print(f"viperbench worker: {exc}", file=sys.stderr)
        return 2
    meter = MemoryMeter(spec.device)
    if spec.memory_budget is None:
        _emit(run_cell(spec, meter))
        return 0
    env = environment(spec.device)

    def over_budget(used: int) -> None:
        error = f"OverBudget: {used} B above the memory budget of {spec.memory_budget} B"
        _emit(make_record(spec.to_dict(), env, status="oom", error=error,
                          metrics={"peak_mem_bytes": used, "memory": {"peak_mem_bytes": used, "kind": "watchdog"}}))
        os._exit(0)

    with BudgetWatchdog(meter, spec.memory_budget, over_budget):
        _emit(run_cell(spec, meter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
