"""Command line: python -m ferrum_ext {env,demo,bench,...}.

  env       every FERRUM_* knob: variable, effective value, source, what it selects
  demo      the README's main job: a small random Qwen3-MoE generating a batch greedily
            (through the kernels on a GPU, the reference twins on CPU)
  generate  greedy generation from a Hugging Face checkpoint directory
  encode    sentence embeddings from a BERT checkpoint directory
  bench     the microbenchmarks (from a source checkout): same flags as benchmarks.run
"""

import argparse
import sys

from ferrum_ext.cli_models import add_model_commands


def _cmd_env(args) -> int:
    from ferrum_ext.runtime_env import main_env

    return main_env([])


def _cmd_bench(args) -> int:
    try:
        from benchmarks.run import main as bench_main
    except ImportError:
        print("bench: the benchmarks/ folder of a source checkout must be importable "
              "(run from the repository root)", file=sys.stderr)
        return 2
    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ferrum_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print the FERRUM_* runtime environment").set_defaults(func=_cmd_env)
    bench = sub.add_parser("bench", help="run the microbenchmarks (GPU)")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for benchmarks.run")
    bench.set_defaults(func=_cmd_bench)
    add_model_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
