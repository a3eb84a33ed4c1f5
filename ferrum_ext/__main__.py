"""Command line: python -m ferrum_ext {env,demo,bench,...}.

  env     every FERRUM_* knob: variable, effective value, source, what it selects
  demo    the main job of the README (runs on GPU through the kernels, else on CPU)
  bench   the microbenchmarks (from a source checkout): same flags as benchmarks.run
"""

import argparse
import sys


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


def _cmd_layer_demo(args) -> int:
    from ferrum_ext.demo import layer_demo

    return layer_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ferrum_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print the FERRUM_* runtime environment").set_defaults(func=_cmd_env)
    bench = sub.add_parser("bench", help="run the microbenchmarks (GPU)")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for benchmarks.run")
    bench.set_defaults(func=_cmd_bench)
    try:
        from ferrum_ext.cli_models import add_model_commands
    except ImportError:
        sub.add_parser("demo", help="run the layer ops on an embedded input").set_defaults(func=_cmd_layer_demo)
    else:
        add_model_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
