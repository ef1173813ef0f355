"""Print the README's CPU table of the video LLM families from the two committed result files."""

from bench.table import field, load_records

speed = {(field(r, "arch"), field(r, "preset"), field(r, "compressor")): r
         for r in load_records(["results/families-cpu.jsonl"])}
fid = {(field(r, "arch"), field(r, "preset"), field(r, "compressor")): r
       for r in load_records(["results/families-fidelity.jsonl"])}
print("| arch | preset | compressor | input tokens | tokens after compression | prefill tok/s | peak MiB "
      "| agreement % | KL first token |")
print("|---|---|---|---|---|---|---|---|---|")
for key, r in speed.items():
    f = fid.get(key)
    agree = f"{field(f, 'task.fidelity/agreement'):.0f}" if f else "(ref.)"
    kl = f"{field(f, 'task.fidelity/kl_first_token'):.2g}" if f else "0"
    print(f"| {' | '.join(map(str, key))} | {field(r, 'input_tokens')} | {field(r, 'tokens_after_compression')} "
          f"| {field(r, 'prefill_tok_s'):.0f} | {field(r, 'peak_mem_bytes') / 2**20:.1f} | {agree} | {kl} |")
