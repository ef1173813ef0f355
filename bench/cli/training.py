"""Train a tiny model on a generated task, or only TransV's modules."""

from __future__ import annotations

import argparse
import json

from bench import flags


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a tiny model on a generated task, or only TransV's modules")
    p.add_argument("--arch", required=True, help="backbone: transformer, mamba, hybrid")
    p.add_argument("--preset", default="tiny", help="preset of a fresh model (default tiny)")
    p.add_argument("--checkpoint", help="start from this trained checkpoint (needed by --train transv)")
    p.add_argument("--task", default="vniah", help="generated training task (default vniah)")
    p.add_argument("--output", required=True, help="checkpoint directory to write (a run resumes from it)")
    p.add_argument("--train", default="model", help="model (everything) | transv (only TransV's modules)")
    p.add_argument("--compressor", default="none", help="with --train transv: transv:schedule=...")
    p.add_argument("--seed", type=flags.seed, default=0, help="training stream and initialisation seed (default 0)")
    p.add_argument("--steps", type=flags.positive_int, default=150, help="optimizer steps (default 150)")
    p.add_argument("--samples-per-step", dest="batch", metavar="N", type=flags.positive_int, default=16,
                   help="training samples per optimizer step (default 16)")
    # the old name: `run --batch` is videos per forward pass, not this
    p.add_argument("--batch", dest="batch", type=flags.positive_int, help=argparse.SUPPRESS)
    p.add_argument("--lr", type=flags.positive_float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--lengths", type=flags.positive_int_list, default="4,8,16",
                   help="haystack lengths in frames (comma list; default 4,8,16)")
    p.add_argument("--tokens-per-frame", type=flags.positive_int, default=16,
                   help="vision tokens per frame after ToMe, as in run and eval (default 16)")
    p.add_argument("--save-every", type=flags.positive_int, default=25,
                   help="write the checkpoint every N steps (default 25)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train)


def cmd_train(args) -> int:
    from bench.train import TrainSettings, train

    settings = TrainSettings(arch=args.arch, output=args.output, preset=args.preset, checkpoint=args.checkpoint,
                             train=args.train, compressor=args.compressor, task=args.task, seed=args.seed,
                             steps=args.steps, batch=args.batch, lr=args.lr, lengths=args.lengths,
                             tokens_per_frame=args.tokens_per_frame, save_every=args.save_every)
    print(json.dumps(train(settings, progress=not args.no_progress)))
    return 0
