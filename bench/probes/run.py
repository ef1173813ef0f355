"""The probes by name, the tasks they run on, and the one ``kind: "flow"`` record of a run."""

from __future__ import annotations

from bench.probes import knockout, logit_lens, mixing
from bench.records import environment, make_record

PROBES = {"knockout": knockout.run, "logit-lens": logit_lens.run, "mixing": mixing.run}
TASKS = ("vniah", "videomme")  # multiple choice with gold answers: the reference answer of every probe


def flow_record(spec: dict, device: str, probe: str, result: dict, *, task: str, data: str, n: int,
                n_total: int, sampling: str, tokenizer: str) -> dict:
    return make_record(spec, environment(device), kind="flow",
                       task={"name": task, "metrics": {}, "n": n, "n_total": n_total, "data": data,
                             "sampling": sampling, "tokenizer": tokenizer},
                       flow={"probe": probe, **result})


def summary(probe: str, result: dict) -> str:
    """A few plain lines for the terminal; the record holds everything."""
    rows = result["rows"]
    if probe == "knockout":
        lines = [f"knockout, window {result['window']}: mean relative change of p(answer) by window start "
                 f"(base p = {result['base_p_mean']:.3f})"]
        for edges in result["edges"]:
            curve = sorted((r["start"], r["mean"]) for r in rows if r["edges"] == edges)
            lines.append(f"  {edges:<24} " + " ".join(f"{m:+.2f}" for _, m in curve))
        return "\n".join(lines)
    if probe == "logit-lens":
        return "logit lens: the first layer from which the token ranks first, per group/token:\n" + "\n".join(
            f"  {k:<18} {'never' if v is None else v}" for k, v in result["surfaces"].items())
    lines = ["mixing: share of the last token's mixing weight per group, by layer"]
    for r in rows:
        if r["query"] == "last":
            lines.append(f"  layer {r['layer']:>2} {r['kind']:<9} " + " ".join(
                f"{g}={v:.2f}" for g, v in r["shares"].items()))
    return "\n".join(lines)
