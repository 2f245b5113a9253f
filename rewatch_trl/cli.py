"""`rewatch-trl <command>`: the command line of rewatch-trl."""

import argparse
import sys


def _tiny(args) -> None:
    from rewatch_trl.tiny import build_tiny_world

    world = build_tiny_world(
        args.out,
        num_videos=args.num_videos,
        seconds=args.seconds,
        fps=args.fps,
        seed=args.seed,
        flashes=args.flashes,
        varied=args.varied,
        family=args.family,
    )
    print(f"tiny world written to {world.root}: model + processor, {len(world.rows)} rows in {world.qa_path.name}")
    keys = " ".join(f"--{key} {value}" for key, value in world.recipe_keys().items())
    print(
        "GRPO on it: accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.grpo "
        f"--config recipes/tiny/grpo.yaml {keys}"
    )


# the per-step counts a summary shows beside the rewards, when the run logged them: what sharing did, and the real
# re-watches of agentic mode
STEP_COUNTS = {
    "sharing/videos_decoded": "decoded",
    "sharing/videos_encoded": "encoded",
    "sharing/prompt_rows": "prompts",
    "rewatch/clips_per_completion": "clips",
}


def reward_summary(run_dir) -> str:
    """A table of the rewards a training run logged per step (from its `trainer_state.json`), with the videos
    decoded and encoded and the prompt rows through the language model in each step, and in agentic mode the
    clips really re-watched per completion."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "trainer_state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trainer state (has the run finished or saved a checkpoint?)")
    history = json.loads(path.read_text())["log_history"]
    # a step that reuses an earlier generation (`num_iterations` > 1) logs no reward, but its sharing counts
    logs = [entry for entry in history if "reward" in entry or "sharing/prompt_rows" in entry]
    rewarded = [entry for entry in logs if "reward" in entry]
    if not rewarded:
        raise ValueError(f"{path}: no rewards were logged")
    names = sorted(
        {key.split("/")[1] for entry in logs for key in entry if key.startswith("rewards/") and key.endswith("/mean")}
    )
    short = [name.removesuffix("_reward") for name in names]
    counts = [key for key in STEP_COUNTS if any(key in entry for entry in logs)]
    header = "  ".join(f"{name:>18}" for name in short) + "".join(f"  {STEP_COUNTS[key]:>8}" for key in counts)
    lines = ["step  reward  " + header]
    for entry in logs:
        # TRL logs None for a reward that none of the step's rows got (an image row's grounding, no captions)
        means = [entry.get(f"rewards/{name}/mean", float("nan")) for name in names]
        values = "  ".join(f"{'-':>18}" if mean is None else f"{mean:>18.3f}" for mean in means)
        values += "".join(f"  {entry.get(key, float('nan')):>8.3g}" for key in counts)
        lines.append(f"{entry['step']:>4}  {entry.get('reward', float('nan')):>6.3f}  {values}")
    half = max(1, len(rewarded) // 2)
    first = sum(entry["reward"] for entry in rewarded[:half]) / half
    last = sum(entry["reward"] for entry in rewarded[-half:]) / half
    lines.append(f"mean reward: first {half} steps {first:.3f} -> last {half} steps {last:.3f}")
    clips = [entry["rewatch/clips_per_completion"] for entry in logs if "rewatch/clips_per_completion" in entry]
    if clips:
        lines.append(f"real re-watches per completion: mean {sum(clips) / len(clips):.3f} over {len(clips)} steps")
    return "\n".join(lines)


def _summary(args) -> None:
    print(reward_summary(args.run_dir))


def _data(args) -> None:
    from pathlib import Path

    from rewatch_trl.data import (
        check_decode,
        drop_rows_of,
        failures_by_container,
        load_qa,
        save_prepared,
        variable_rate_videos,
    )
    from rewatch_trl.video import write_undecodable

    if args.drop_undecodable and not args.check_decode:
        raise ValueError("--drop-undecodable needs --check-decode")
    if not (args.save_to_disk or args.push_to_hub or args.check_decode):
        raise ValueError("say where the dataset goes: --save-to-disk DIR and/or --push-to-hub ID (or --check-decode)")
    dataset, report = load_qa(
        args.qa, args.captions, args.video_root, skip_invalid=args.skip_invalid, format=args.format
    )
    print(report)
    failures = []
    if args.check_decode:
        paths = sorted({str(Path(args.video_root) / name) for name in dataset["videos"] if name is not None})
        settings = _video_settings(args)
        failures = check_decode(paths, settings, args.num_proc)
        print(f"{len(failures)} of {len(paths)} videos do not decode")
        for failure in failures:
            print(f"  {failure['error']}")
        by_container = failures_by_container(paths, failures)
        if by_container:
            shown = ", ".join(f"{suffix} {failed} of {total}" for suffix, (failed, total) in by_container.items())
            print(f"{settings.video_backend} cannot decode, by container: {shown}")
        drifting = variable_rate_videos(paths, num_proc=args.num_proc)
        if drifting:
            print(
                f"{len(drifting)} video(s) have a variable frame rate: frames are placed at the average rate (as "
                "qwen-vl-utils does), so their times, and their clips', are off by up to the drift shown; "
                "re-encode at a constant rate to fix (ffmpeg -i IN -fps_mode cfr OUT)"
            )
            for path, drift in sorted(drifting.items()):
                print(f"  {path}: {drift:.2f} s")
        if failures and args.drop_undecodable:
            rows = len(dataset)
            dataset = drop_rows_of(dataset, {failure["path"] for failure in failures}, args.video_root)
            print(f"dropped the {rows - len(dataset)} rows of the {len(failures)} video(s) that do not decode")
        elif failures:
            print("their rows are kept: a run leaves them out as it meets them (--drop-undecodable drops them now)")
    if args.save_to_disk or args.push_to_hub:
        save_prepared(dataset, args.video_root, args.save_to_disk, args.push_to_hub, args.embed_videos)
        print(f"wrote {len(dataset)} rows to {' and '.join(filter(None, [args.save_to_disk, args.push_to_hub]))}")
    if failures and args.save_to_disk:
        write_undecodable(args.save_to_disk, failures)
        print(f"the videos that do not decode: {Path(args.save_to_disk) / 'undecodable.jsonl'}")


def _video_settings(args):
    from rewatch_trl.prompts import VideoSettings

    return VideoSettings(
        video_fps=args.fps,
        video_max_frames=args.max_frames,
        video_min_pixels=args.min_pixels,
        video_max_pixels=args.max_pixels,
        video_total_pixels=args.total_pixels,
        video_backend=args.video_backend,
        image_min_pixels=args.image_min_pixels,
        image_max_pixels=args.image_max_pixels,
    )


def _rewatch_settings(args):
    from rewatch_trl.rewatch import RewatchSettings

    return RewatchSettings(
        rewatch_mode="agentic" if args.rewatch else "imagined",
        rewatch_fps=args.rewatch_fps,
        rewatch_max_frames=args.rewatch_max_frames,
        rewatch_max_pixels=args.rewatch_max_pixels,
        max_rewatches=args.max_rewatches,
    )


def _infer(args) -> None:
    from rewatch_trl.infer import dumps, format_result, infer

    result = infer(
        args.model,
        args.video,
        args.question,
        _video_settings(args),
        args.max_new_tokens,
        args.backend,
        args.dtype,
        _vllm_kwargs(args),
        _rewatch_settings(args),
    )
    print(dumps(result) if args.json else format_result(result))


def _eval(args) -> None:
    from rewatch_trl.data import check_videos, load_prepared, video_root_of
    from rewatch_trl.eval import check_rows, evaluate
    from rewatch_trl.infer import Predictor

    dataset = load_prepared(args.data, args.split)
    check_rows(dataset)
    root = video_root_of(args.data, args.video_root, dataset)
    check_videos(dataset, root, args.data)
    predictor = Predictor(
        args.model,
        _video_settings(args),
        root,
        args.max_new_tokens,
        args.backend,
        args.dtype,
        _vllm_kwargs(args),
        _rewatch_settings(args),
    )
    result = evaluate(predictor, dataset, args.out, args.batch_size, args.limit)
    overall = result["overall"]
    print(
        f"{overall['n']} rows: accuracy {overall['accuracy']:.3f}, format {overall['format_rate']:.3f}; report: {args.out}"
    )


def _vllm_kwargs(args) -> dict:
    """The vLLM engine arguments the command line sets (for `--backend vllm`)."""
    kwargs = {"enforce_eager": True} if args.enforce_eager else {}
    if args.max_model_len is not None:
        kwargs["max_model_len"] = args.max_model_len
    return kwargs


def _add_video_options(parser) -> None:
    """How frames are sampled (`VideoSettings`; the seed's by default)."""
    from rewatch_trl.prompts import VideoSettings

    defaults = VideoSettings()
    parser.add_argument("--fps", type=float, default=defaults.video_fps)
    parser.add_argument("--max-frames", type=int, default=defaults.video_max_frames)
    parser.add_argument("--min-pixels", type=int, default=defaults.video_min_pixels, help="per frame")
    parser.add_argument("--max-pixels", type=int, default=defaults.video_max_pixels, help="per frame")
    parser.add_argument("--total-pixels", type=int, default=defaults.video_total_pixels, help="over all frames")
    parser.add_argument("--video-backend", default=defaults.video_backend)
    parser.add_argument("--image-min-pixels", type=int, default=defaults.image_min_pixels, help="an image row's")
    parser.add_argument("--image-max-pixels", type=int, default=defaults.image_max_pixels, help="an image row's")


def _add_generation_options(parser) -> None:
    from rewatch_trl.rewatch import RewatchSettings

    parser.add_argument("--model", required=True, help="a trained model directory or Hub id")
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--dtype", default="auto", help="model dtype (vLLM's 'auto' makes an fp32 checkpoint bf16)")
    parser.add_argument("--max-model-len", type=int, help="vLLM: context to reserve (default: the model's)")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM: no CUDA graphs / compilation")
    # The seed's video settings by default; a model is best used with those it was trained with.
    _add_video_options(parser)
    rewatch = RewatchSettings()
    parser.add_argument(
        "--rewatch", action="store_true", help="agentic re-watching: show the model the clip each action names"
    )
    parser.add_argument("--rewatch-fps", type=float, default=rewatch.rewatch_fps, help="frames a second of a clip")
    parser.add_argument("--rewatch-max-frames", type=int, default=rewatch.rewatch_max_frames)
    parser.add_argument("--rewatch-max-pixels", type=int, default=rewatch.rewatch_max_pixels, help="per clip frame")
    parser.add_argument("--max-rewatches", type=int, default=rewatch.max_rewatches, help="actions served a completion")


def build_parser() -> argparse.ArgumentParser:
    from rewatch_trl.families import FAMILIES

    parser = argparse.ArgumentParser(prog="rewatch-trl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny", help="write the offline tiny world (model, processor, videos, rows)")
    tiny.add_argument("--out", required=True, help="directory to write")
    tiny.add_argument("--num-videos", type=int, default=4)
    tiny.add_argument("--seconds", type=float, default=8.0, help="length of each synthetic video")
    tiny.add_argument("--fps", type=int, default=4, help="frame rate of each synthetic video")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--flashes",
        action="store_true",
        help="also a one-frame flash in each video, between its sampled frames, and questions about it (that only "
        "a real re-watch can answer)",
    )
    tiny.add_argument(
        "--varied",
        action="store_true",
        help="videos of different lengths, frame rates and sizes (grids differ, fractional seconds a grid) and "
        "questions of different lengths, instead of one shape for all",
    )
    tiny.add_argument(
        "--family", default="qwen2_5_vl", choices=sorted(FAMILIES), help="the model family (rewatch_trl/families.py)"
    )
    tiny.set_defaults(func=_tiny)

    data = commands.add_parser("data", help="validate a QA file (+ captions) and save or push a dataset")
    data.add_argument("--qa", required=True, help="QA file: the seed's JSONL, Video-R1's JSON, LongVideo-Reason's")
    data.add_argument(
        "--format",
        choices=["auto", "rewatch", "video-r1", "longvideo-reason"],
        default="auto",
        help="the QA file's format (auto: told by its fields)",
    )
    data.add_argument("--captions", help="captions JSONL: {videos, captions} a line")
    data.add_argument(
        "--media-root",
        "--video-root",
        dest="video_root",
        required=True,
        help="directory the rows' videos and images are relative to (Video-R1's data root)",
    )
    data.add_argument("--save-to-disk", help="write the dataset here (datasets' save_to_disk)")
    data.add_argument("--push-to-hub", help="push the dataset to this Hub id")
    data.add_argument("--embed-videos", action="store_true", help="copy/upload the videos alongside")
    data.add_argument("--skip-invalid", action="store_true", help="leave bad rows out (listed) instead of stopping")
    data.add_argument(
        "--check-decode",
        action="store_true",
        help="decode every video once, as the run samples it (the video options below), and list those that fail",
    )
    data.add_argument("--drop-undecodable", action="store_true", help="with --check-decode: drop their rows")
    data.add_argument("--num-proc", type=int, default=1, help="--check-decode: decoding processes")
    _add_video_options(data)
    data.set_defaults(func=_data)

    infer = commands.add_parser(
        "infer", help="answer a question about a video (or an image), as the seed's inference does"
    )
    _add_generation_options(infer)
    infer.add_argument("video", help="a video file, or an image file (.png, .jpg, ...)")
    infer.add_argument("question")
    infer.add_argument("--json", action="store_true", help="print the prompt, frames, trace, answer and timings")
    infer.set_defaults(func=_infer)

    evaluate = commands.add_parser("eval", help="evaluate a model on seed-format rows (resumable)")
    _add_generation_options(evaluate)
    evaluate.add_argument("--data", required=True, help="a prepared dataset directory, a QA JSONL or a Hub id")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--video-root", help="where the rows' videos are (default: videos/ beside --data)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N rows only")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--out", required=True, help="report JSON; predictions go beside it")
    evaluate.set_defaults(func=_eval)

    lmms_eval = commands.add_parser(
        "lmms-eval",
        help="run lmms-eval with the rewatch model and the paper's benchmarks (rewatch_minerva, ...) found",
        description="Everything after `lmms-eval` goes to `python -m lmms_eval`, with --include_path set to the "
        "tasks shipped with rewatch-trl, e.g. --model rewatch --model_args pretrained=DIR --tasks rewatch_minerva",
    )
    lmms_eval.add_argument("arguments", nargs=argparse.REMAINDER)
    lmms_eval.set_defaults(func=_lmms_eval)
    summary = commands.add_parser("summary", help="print the rewards a training run logged per step")
    summary.add_argument("run_dir", help="the run's output_dir")
    summary.set_defaults(func=_summary)
    rollouts = commands.add_parser(
        "rollouts",
        help="write one self-contained HTML page of a run's logged rollouts (or of eval predictions)",
        description="The frames each prompt showed, each completion's parts and the clips it named, its rewards and "
        "advantage, step by step; filters for groups whose rewards did not vary and for wrong answers.",
    )
    rollouts.add_argument("source", help="a run's output_dir (trained with log_completions), or OUT.predictions.jsonl")
    rollouts.add_argument("--out", help="the page (default: rollouts.html in the run's directory, or beside the file)")
    _add_video_options(rollouts)
    rollouts.set_defaults(func=_rollouts)
    env = commands.add_parser("env", help="print the versions that matter, for a bug report (like `trl env`)")
    env.set_defaults(func=_env)
    return parser


def _env(args) -> None:
    from rewatch_trl.versions import report

    print(report())


def _rollouts(args) -> None:
    from pathlib import Path

    from rewatch_trl.rollout_page import render_page, run_log_history
    from rewatch_trl.rollouts import read_rollouts, rollouts_root

    source = Path(args.source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such run directory or predictions file")
    steps = read_rollouts(source, _video_settings(args))
    out = (
        Path(args.out) if args.out else (source / "rollouts.html" if source.is_dir() else source.with_suffix(".html"))
    )
    history = run_log_history(source) if source.is_dir() else []
    out.write_text(render_page(steps, rollouts_root(source), title=f"rollouts of {source}", log_history=history))
    groups = sum(len(step["groups"]) for step in steps)
    print(f"{out}: {len(steps)} steps, {groups} prompts, {out.stat().st_size / 1024:.0f} KiB (opens from disk)")


def _lmms_eval(args) -> None:
    import subprocess

    from rewatch_trl.lmms import TASKS_DIR

    # lmms-eval exits 0 when an evaluation fails, unless its verbosity is DEBUG
    verbosity = [] if "--verbosity" in args.arguments else ["--verbosity", "DEBUG"]
    command = [sys.executable, "-m", "lmms_eval", "--include_path", str(TASKS_DIR), *verbosity, *args.arguments]
    code = subprocess.call(command)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "lmms-eval":  # its options are lmms-eval's own
        args.arguments = unknown + args.arguments
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"rewatch-trl {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
