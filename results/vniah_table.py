"""Print the README's V-NIAH accuracy x efficiency table from the two committed result files."""

from bench.table import field, load_records

accuracy = load_records(["results/vniah-accuracy.jsonl"])
speed = {(field(r, "arch"), field(r, "compressor")): r for r in load_records(["results/vniah-efficiency.jsonl"])}
depths = sorted({k.split("/")[-1] for r in accuracy for k in r["task"]["metrics"] if k.startswith("accuracy/depth/")},
                key=float)
print("| arch | compressor | vision tokens kept (32 frames) | accuracy % | "
      + " | ".join(f"depth {d}" for d in depths) + " | prefill tok/s | peak MiB |")
print("|---|---|---|---|" + "---|" * len(depths) + "---|---|")
for r in accuracy:
    key = (field(r, "arch"), field(r, "compressor"))
    m, s = r["task"]["metrics"], speed.get(key)
    kept = f"{field(s, 'tokens_after_compression') - 1 - field(s, 'spec.prompt_tokens')}" if s else "-"
    cells = " | ".join(f"{m[f'accuracy/depth/{d}']:.0f}" for d in depths)
    perf = f"{field(s, 'prefill_tok_s'):.0f} | {field(s, 'peak_mem_bytes') / 2**20:.1f}" if s else "- | -"
    print(f"| {key[0]} | `{key[1]}` | {kept} | {m['accuracy']:.1f} | {cells} | {perf} |")
