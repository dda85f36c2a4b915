"""`python -m trainforge_trainer train|serve`.

train  [--config FILE] [--entrypoint module:function]   (config: FILE, else TRAINFORGE_CONFIG)
serve  ...                                               (the inference server's own flags)
export --checkpoint DIR --out DIR [--dtype auto|fp32|bf16|fp16]
                                          (a causal-lm checkpoint as a Hugging Face directory)

Exit codes (trainforge_contract): 0 done, EXIT_CONFIG_ERROR for a config that cannot run
(one line per bad field on stderr, also in the termination message), EXIT_PREEMPTED after a
SIGTERM-triggered checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import trainforge_contract as contract
from trainforge_trainer.config import ConfigError, load
from trainforge_trainer.metrics import termination_message_path, write_termination_message


def _config_error(exc: ConfigError, env: Mapping[str, str]) -> int:
    for line in exc.lines:
        print(f"trainforge-trainer: config error: {line}", file=sys.stderr)
    path = termination_message_path(env)
    if path is not None:
        write_termination_message(path, {contract.PROGRESS_ERROR_KEY: "\n".join(exc.lines)})
    return contract.EXIT_CONFIG_ERROR


def _train(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        cfg = load(args.config, env, args.entrypoint)
        # Imported only now: torch takes seconds to import and a bad config should not wait.
        from trainforge_trainer.loop import train

        return train(cfg, env)
    except ConfigError as exc:
        return _config_error(exc, env)


def _export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from pathlib import Path

    from trainforge_trainer import causal_lm
    from trainforge_trainer.checkpoint import resolve

    try:
        found = resolve(args.checkpoint, field="--checkpoint")
        out = causal_lm.export(found, Path(args.out), args.dtype)
    except ConfigError as exc:
        return _config_error(exc, env)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # The server parses its own flags (argparse's REMAINDER would refuse them here).
        from trainforge_trainer.serve import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m trainforge_trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (single process or under torchrun)")
    train.add_argument("--config", help="YAML/JSON trainer config (default: TRAINFORGE_CONFIG)")
    train.add_argument("--entrypoint", help="module:function building model, datasets, loss")
    commands.add_parser(
        "serve", help="serve a checkpoint (Open Inference Protocol); see `serve --help`"
    )
    export = commands.add_parser(
        "export", help="write a causal-lm checkpoint as a Hugging Face directory"
    )
    export.add_argument(
        "--checkpoint",
        required=True,
        help="a step-XXXXXXXX directory, or a checkpoint root (its newest committed step)",
    )
    export.add_argument("--out", required=True, help="the directory to write (replaced)")
    export.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="weight dtype (default: the run's export.dtype)",
    )
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args, os.environ)
    return _train(args, os.environ)


if __name__ == "__main__":
    sys.exit(main())
