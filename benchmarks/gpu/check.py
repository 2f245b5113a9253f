"""The prepared GPU check: a video GRPO step of the published 7B and 8B shapes, stock and shared, in one short run.

    python3 benchmarks/gpu/check.py --fetch .whl      # here, once: the wheels of wheels.txt into .whl/ (~36 MB)
    python3 benchmarks/gpu/check.py --wheels .whl     # on the bare GPU machine: installs them, then ~8 minutes
    python benchmarks/gpu/check.py --tiny             # on CPU, the tiny models (tests/test_gpu_check.py)

For each shape (`tiny.PUBLISHED_SHAPES`: Qwen2.5-VL-7B and Qwen3-VL-8B, random weights built from their configs,
bf16, sdpa attention) and each frame count (64 and 192 frames of the paper's size: 128 visual tokens a frame pair),
one prompt of G = 8 completions of 64 tokens (transformers' generation), beta 0, SGD, TRL's gradient checkpointing:
a warm-up step, then one timed step, stock (every completion encodes its video and its prompt) and shared (the
vision tower once a video, the prompt prefix once a group; `step_cost.MODES`). It prints one table, then the
headline for the paper's setting (Qwen2.5-VL-7B, 192 frames):

    GPU step: stock 41.2s 77.0GiB, shared 14.1s 15.3GiB (2.92x, 5.03x)

and last the long setting: Qwen2.5-VL-7B on 512 frames, shared only, its peak beside the bytes
`benchmarks/sequence_parallel.py` predicts for it (the model behind its frames-that-fit table at SP 1 to 8).

Every figure goes to `$OUT/gpu_check.json` (when `OUT` is set) after each run, so a run that the machine's time
limit cuts short keeps what it measured; runs that would start after `--budget-s` seconds are skipped and say so.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEEL_LIST = HERE / "wheels.txt"
# the GPU machine's CPython and platform (pip matches a manylinux tag exactly, so each is named)
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"] + [
    arg
    for tag in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014", "manylinux1")
    for arg in ("--platform", f"{tag}_x86_64")
]
# setup.cfg's requirements that wheels.txt need not carry: on the machine's image already, or not imported by the check
ON_THE_IMAGE = {"transformers", "peft", "accelerate", "pyyaml", "tqdm"}
NOT_IMPORTED = {"decord": "the check reads its videos with PyAV", "openai": "the LLM judge", "rouge-score": "eval"}
MODES = {"stock": "per completion (stock)", "shared": "vision + prefix shared"}


def wheel_list(path: Path = WHEEL_LIST) -> dict[str, str]:
    """The `name==version` pins of `path` (comments and blank lines skipped), by name as pip compares them.

    Example:
    ```python
    >>> wheel_list()["trl"]
    '1.16.0'
    ```
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise ValueError(f"{path}:{number}: {line!r} is not a `name==version` pin ({error})") from error
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise ValueError(f"{path}:{number}: {line!r} is not a `name==version` pin")
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def setup_requirements(setup_cfg: Path = ROOT / "setup.cfg") -> dict:
    """setup.cfg's `install_requires`, by normalised name (`packaging.requirements.Requirement`s)."""
    import configparser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    config = configparser.ConfigParser()
    config.read(setup_cfg)
    lines = filter(None, (line.strip() for line in config["options"]["install_requires"].split("\n")))
    return {canonicalize_name(requirement.name): requirement for requirement in map(Requirement, lines)}


def image_problems(versions=None) -> list[str]:
    """The packages the check takes from the machine's image (`ON_THE_IMAGE`) that are missing there or outside
    setup.cfg's specifiers; `versions(name)` gives an installed version (`importlib.metadata.version` by default)."""
    problems = []
    for name, requirement in setup_requirements().items():
        if name in ON_THE_IMAGE and (why := unmet(requirement, versions)):
            problems.append(f"setup.cfg's {requirement} is {why}")
    return problems


def unmet(requirement, versions=None) -> str | None:
    """Why what is installed does not meet `requirement` ("not installed", "installed as 1.2"), or None when it does;
    `versions(name)` gives an installed version (`importlib.metadata.version` by default)."""
    import importlib.metadata as metadata

    try:
        version = (versions or metadata.version)(requirement.name)
    except metadata.PackageNotFoundError:
        return "not installed"
    return None if requirement.specifier.contains(version, prereleases=True) else f"installed as {version}"


def applies(requirement) -> bool:
    """A requirement of the package itself, not of one of its extras (nor of another platform)."""
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def wheel_list_problems(pins: dict[str, str], setup_cfg: Path = ROOT / "setup.cfg") -> list[str]:
    """What makes `pins` (`wheel_list`) miss what the check imports: a requirement of setup.cfg neither listed nor
    accounted for (`ON_THE_IMAGE`, `NOT_IMPORTED`), a listed version outside setup.cfg's specifier, or a listed
    package that no listed package requires (per this environment's installed metadata) or whose version falls outside
    that requirement.

    Example:
    ```python
    >>> wheel_list_problems(wheel_list() | {"trl": "1.15.0"})
    ["trl==1.15.0 is outside setup.cfg's trl==1.16.0"]
    ```
    """
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    required = setup_requirements(setup_cfg)
    problems = []
    for name, requirement in required.items():
        if name in pins:
            if not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{name}=={pins[name]} is outside setup.cfg's {requirement}")
        elif name not in ON_THE_IMAGE and name not in NOT_IMPORTED:
            problems.append(f"setup.cfg's {requirement} is neither in wheels.txt nor on the machine's image")
    for name, version in pins.items():
        if name in required:
            continue
        needed_by = [
            (owner, requirement)
            for owner in pins
            if owner != name
            for requirement in map(Requirement, metadata.requires(owner) or [])
            if canonicalize_name(requirement.name) == name and applies(requirement)
        ]
        if not needed_by:
            problems.append(f"{name}=={version} is neither in setup.cfg nor required by a listed package")
        for owner, requirement in needed_by:
            if not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{name}=={version} is outside {owner}'s {requirement}")
    return problems


def fetch(folder: Path) -> int:
    """Download wheels.txt's wheels for the GPU machine into `folder`; prints their total size."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *PLATFORM, "-d", str(folder), "-r"]
    subprocess.run([*command, str(WHEEL_LIST)], check=True)
    wheels = list(folder.glob("*.whl"))
    print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB in {folder}")
    return 0


def wheel_files(folder: Path) -> list[Path]:
    """The wheels of wheels.txt in `folder`, one a name; a missing one or a second version is an error naming it."""
    from packaging.utils import parse_wheel_filename

    found = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found.setdefault(name, []).append((str(version), wheel))
    problems = []
    for name, version in wheel_list().items():
        versions = found.get(name, [])
        if [v for v, _ in versions] != [version]:
            problems.append(f"{name}=={version} (found: {', '.join(v for v, _ in versions) or 'none'})")
    if problems:
        raise SystemExit(
            f"{folder} lacks the wheels of {WHEEL_LIST.relative_to(ROOT)}, or holds other versions: "
            f"{'; '.join(problems)}. Fetch them with: python3 benchmarks/gpu/check.py --fetch {folder}"
        )
    return [found[name][0][1] for name in wheel_list()]


def install(folder: Path, target: Path) -> None:
    """Install the wheels of `folder` into `target` (no index, no dependencies: the machine reaches no network) and
    put it first on the import path."""
    wheels = wheel_files(folder)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    command += ["--no-cache-dir", "--upgrade", "--target", str(target)]
    subprocess.run([*command, *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))


def unmet_requirements(names) -> list[str]:
    """The requirements of the installed distributions `names` that nothing installed meets (extras skipped): on a
    bare machine, what may fail to import."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    problems = []
    for name in names:
        for requirement in filter(applies, map(Requirement, metadata.requires(name) or [])):
            if why := unmet(requirement):
                problems.append(f"{name} needs {requirement} ({why})")
    return problems


def measure(options) -> dict:
    """Every (shape, frames, mode) run, the headline's first; written to `$OUT/gpu_check.json` after each."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import torch
    from step_cost import MODES as STEP_MODES
    from step_cost import parse_options, run, world_and_settings

    device = "cpu" if options.tiny else "cuda"
    # --tiny: the tiny sizes, built from their configs as the published shapes are
    shapes = ["tiny-qwen2_5_vl", "tiny-qwen3_vl"] if options.tiny else ["qwen2.5-vl-7b", "qwen3-vl-8b"]
    frames = options.frames or ([4, 8] if options.tiny else [64, 192])
    generations = options.generations or (2 if options.tiny else 8)
    tokens = options.completion_tokens or (8 if options.tiny else 64)
    order = sorted(
        ((shape, count) for shape in shapes for count in frames),
        key=lambda point: (point[1] != max(frames), shapes.index(point[0])),
    )
    # the long setting, last: the paper's shape on far more frames, shared only (what sequence parallelism splits)
    long_frames = options.long_frames or (16 if options.tiny else 512)
    order.append((shapes[0], long_frames))
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "generations": generations,
        "completion_tokens": tokens,
        "runs": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for shape, count in order:
            argv = ["--device", device, "--frames", str(count), "--generations", str(generations), "--steps", "1"]
            argv += ["--prompts", "1", "--completion-tokens", str(tokens), "--iterations", "1", "--workers", "0"]
            argv += ["--video-backend", "pyav", "--paper-video"]
            argv += ["--model", shape]
            step_options = parse_options(__doc__, argv)
            step_options.measure_memory = options.tiny  # on CPU, the profiler's peak of the timed step
            world = None
            long = (shape, count) == order[-1]
            for mode in ("shared",) if long else ("shared", "stock"):  # shared first: it fits where stock may not
                record = {"shape": shape, "frames": count, "mode": mode} | ({"long": True} if long else {})
                if long and not options.tiny:  # the bytes `benchmarks/sequence_parallel.py` predicts for it
                    from sequence_parallel import parameters, predict

                    # with one GPU's weights and gradients (bf16, SGD: no optimizer state)
                    state = 4 * parameters(shape)[0]
                    record["predicted_gib"] = (predict(shape, count, 1, False, generations, tokens) + state) / 2**30
                if time.perf_counter() - start > options.budget_s:
                    record["skipped"] = f"past the {options.budget_s:.0f} s budget"
                else:
                    if world is None:
                        world, settings = world_and_settings(step_options, f"{tmp}/{shape}-{count}")
                    step_options.out = f"{tmp}/{shape}-{count}-{mode}"
                    began = time.perf_counter()
                    try:
                        result = run(world, settings, STEP_MODES[MODES[mode]], step_options)
                    except torch.OutOfMemoryError:
                        record["out_of_memory"] = True
                    else:
                        peak = result["peak GiB"] if device == "cuda" else result["peak MiB"] / 1024
                        record |= {"step_s": result["step"], "peak_gib": peak, "tokens": result["tokens"]}
                        record["videos_encoded"] = result["videos encoded"]
                        record["phases_s"] = {
                            phase: result[phase]
                            for phase in ("generate", "old/ref log-probs", "loss forward", "backward")
                            if phase in result
                        }
                    record["wall_s"] = time.perf_counter() - began
                report["runs"].append(record)
                print(json.dumps(record), flush=True)
                write(report)
    return report


def write(report: dict) -> None:
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(report, indent=1))


def cell(record: dict | None) -> str:
    if record is None or "skipped" in record:
        return "skipped"
    if record.get("out_of_memory"):
        return "out of memory"
    return f"{record['step_s']:.2f} s {record['peak_gib']:.2f} GiB"


def summary(report: dict) -> list[str]:
    """The table (a row a shape and frame count) and, last, the headline line."""
    runs = {(r["shape"], r["frames"], r["mode"]): r for r in report["runs"] if not r.get("long")}
    points = list(dict.fromkeys((r["shape"], r["frames"]) for r in report["runs"] if not r.get("long")))
    lines = [
        f"{report['device']}, torch {report['torch']}: one prompt, G = {report['generations']}, "
        f"{report['completion_tokens']} completion tokens, a step after one to warm up",
        f"{'shape':<16}{'frames':>7}{'tokens':>8}{'stock':>24}{'shared':>24}{'speed-up':>10}{'memory':>8}",
    ]
    for shape, frames in points:
        stock, shared = runs.get((shape, frames, "stock")), runs.get((shape, frames, "shared"))
        measured = [r for r in (stock, shared) if r and "step_s" in r]
        tokens = f"{measured[0]['tokens']:.0f}" if measured else "-"
        ratios = ("-", "-")
        if len(measured) == 2:
            ratios = (
                f"{stock['step_s'] / shared['step_s']:.2f}x",
                f"{stock['peak_gib'] / shared['peak_gib']:.2f}x",
            )
        lines.append(
            f"{shape:<16}{frames:>7}{tokens:>8}{cell(stock):>24}{cell(shared):>24}{ratios[0]:>10}{ratios[1]:>8}"
        )
    shape, frames = points[0]  # the headline: `measure` runs it first
    stock, shared = runs.get((shape, frames, "stock")), runs.get((shape, frames, "shared"))
    if stock and shared and "step_s" in stock and "step_s" in shared:
        lines.append(
            f"GPU step: stock {stock['step_s']:.2f}s {stock['peak_gib']:.2f}GiB, shared {shared['step_s']:.2f}s "
            f"{shared['peak_gib']:.2f}GiB ({stock['step_s'] / shared['step_s']:.2f}x, "
            f"{stock['peak_gib'] / shared['peak_gib']:.2f}x)"
        )
    else:
        lines.append(f"GPU step: stock {cell(stock)}, shared {cell(shared)} ({shape}, {frames} frames)")
    for record in (r for r in report["runs"] if r.get("long")):
        predicted = f" (predicted {record['predicted_gib']:.2f} GiB)" if "predicted_gib" in record else ""
        lines.append(f"long: {record['shape']} {record['frames']} frames, shared: {cell(record)}{predicted}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", type=Path, metavar="DIR", help="download wheels.txt's wheels into DIR, and stop")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="install DIR's wheels first (the bare machine)")
    parser.add_argument("--target", type=Path, default=Path("/tmp/rewatch-gpu-site"), help="where they go")
    parser.add_argument("--tiny", action="store_true", help="the tiny models of the two families, on CPU")
    parser.add_argument("--frames", type=int, nargs="+", help="frame counts (default 64 192; --tiny: 4 8)")
    parser.add_argument("--long-frames", type=int, help="the long setting's frames (default 512; --tiny: 16)")
    parser.add_argument("--generations", type=int, help="G (default 8; --tiny: 2)")
    parser.add_argument("--completion-tokens", type=int, help="max_completion_length (default 64; --tiny: 8)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no run after this many seconds")
    options = parser.parse_args(argv)
    if options.fetch:
        return fetch(options.fetch)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if options.wheels:
        install(options.wheels, options.target)
        for line in unmet_requirements(wheel_list()) + image_problems():
            print(f"warning: {line}", flush=True)
    if not options.tiny:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: the check measures a GPU (--tiny runs the tiny models on CPU)")
    report = measure(options)
    lines = summary(report)
    report["summary"] = lines
    write(report)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
