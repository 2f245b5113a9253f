"""`rewatch-trl <command>`: the command line of rewatch-trl."""

import argparse
import sys


def _tiny(args) -> None:
    from rewatch_trl.tiny import build_tiny_world

    world = build_tiny_world(args.out, num_videos=args.num_videos, seconds=args.seconds, fps=args.fps, seed=args.seed)
    print(f"tiny world written to {world.root}: model + processor, {len(world.rows)} rows in {world.qa_path.name}")


def _demo(args) -> None:
    from rewatch_trl.demo import run_demo

    run_demo(args.out, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewatch-trl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny", help="write the offline tiny world (model, processor, videos, rows)")
    tiny.add_argument("--out", required=True, help="directory to write")
    tiny.add_argument("--num-videos", type=int, default=4)
    tiny.add_argument("--seconds", type=float, default=8.0, help="length of each synthetic video")
    tiny.add_argument("--fps", type=int, default=4, help="frame rate of each synthetic video")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny)

    demo = commands.add_parser("demo", help="build the tiny world and run the CPU demo on it")
    demo.add_argument("--out", default="runs/tiny-world")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"rewatch-trl {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
