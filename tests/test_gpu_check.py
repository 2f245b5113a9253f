"""The prepared GPU check (`benchmarks/gpu/check.py`): it runs on CPU with the tiny models, as the GPU machine will
run it with the published shapes, and its wheel list carries what setup.cfg pins."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from check import image_problems, wheel_files, wheel_list, wheel_list_problems  # noqa: E402


def test_the_tiny_check_measures_stock_against_shared_on_cpu(tmp_path):
    # the entry script as the device runs it (a process of its own, OUT set), the tiny models of both families
    environment = os.environ | {"OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks/gpu/check.py"), "--tiny", "--frames", "4"]
    output = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert output.returncode == 0, output.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    runs = {(r["shape"], r["mode"]): r for r in report["runs"] if not r.get("long")}
    # the long setting last: the first shape on 16 frames, shared only, its peak above the 4 frames' (the control)
    long = report["runs"][-1]
    assert (long["shape"], long["frames"], long["mode"], long["long"]) == ("tiny-qwen2_5_vl", 16, "shared", True)
    assert long["peak_gib"] > runs[("tiny-qwen2_5_vl", "shared")]["peak_gib"] and long["tokens"] > 4 * 256
    # the headline's shape first, shared before stock (it fits where stock may not)
    assert list(runs) == [(s, m) for s in ("tiny-qwen2_5_vl", "tiny-qwen3_vl") for m in ("shared", "stock")]
    for shape in ("tiny-qwen2_5_vl", "tiny-qwen3_vl"):
        stock, shared = runs[(shape, "stock")], runs[(shape, "shared")]
        # the same batch in both modes: 2 completions of 8 tokens after a prompt of 2 frame pairs of 128 visual tokens
        assert stock["tokens"] == shared["tokens"] > 2 * (256 + 8)
        # stock encodes the video once a completion (G = 2), shared once a prompt
        assert stock["videos_encoded"] == 2 * shared["videos_encoded"] > 0
        # the vision tower's activations, G times over: the control that the peak is the step's own
        assert stock["peak_gib"] > 2 * shared["peak_gib"] > 0
        assert stock["step_s"] > 0 and shared["step_s"] > 0
    # Qwen3-VL writes each frame pair's time as text: its prompts are longer for the same visual tokens
    assert runs[("tiny-qwen3_vl", "stock")]["tokens"] > runs[("tiny-qwen2_5_vl", "stock")]["tokens"]
    *_, headline, long_line = output.stdout.strip().splitlines()
    assert long_line == f"long: tiny-qwen2_5_vl 16 frames, shared: {long['step_s']:.2f} s {long['peak_gib']:.2f} GiB"
    figures = re.fullmatch(
        r"GPU step: stock ([\d.]+)s ([\d.]+)GiB, shared ([\d.]+)s ([\d.]+)GiB \(([\d.]+)x, ([\d.]+)x\)", headline
    )
    assert figures, headline
    stock, shared = runs[("tiny-qwen2_5_vl", "stock")], runs[("tiny-qwen2_5_vl", "shared")]
    expected = [stock["step_s"], stock["peak_gib"], shared["step_s"], shared["peak_gib"]]
    expected += [stock["step_s"] / shared["step_s"], stock["peak_gib"] / shared["peak_gib"]]
    assert [float(x) for x in figures.groups()] == pytest.approx(expected, abs=0.006)
    assert report["summary"][-2:] == [headline, long_line]


def test_a_run_past_its_budget_is_skipped_and_says_so(tmp_path, monkeypatch, capsys):
    from check import main

    monkeypatch.setenv("OUT", str(tmp_path))
    assert main(["--tiny", "--frames", "4", "--budget-s", "0"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["skipped"] for r in report["runs"]] == ["past the 0 s budget"] * 5
    assert capsys.readouterr().out.strip().splitlines()[-2:] == [
        "GPU step: stock skipped, shared skipped (tiny-qwen2_5_vl, 4 frames)",
        "long: tiny-qwen2_5_vl 16 frames, shared: skipped",
    ]


def test_the_wheel_list_carries_what_setup_cfg_pins():
    pins = wheel_list()
    assert wheel_list_problems(pins) == []
    assert pins["trl"] == "1.16.0" and pins["qwen-vl-utils"] == "0.0.14"
    # planted errors: each is named
    assert wheel_list_problems(pins | {"trl": "1.15.0"}) == ["trl==1.15.0 is outside setup.cfg's trl<2,>=1.16.0"]
    assert wheel_list_problems(pins | {"dill": "0.3.0"}) == ["dill==0.3.0 is outside multiprocess's dill>=0.4.1"]
    without = {name: version for name, version in pins.items() if name != "qwen-vl-utils"}
    assert wheel_list_problems(without) == [
        "setup.cfg's qwen-vl-utils>=0.0.14 is neither in wheels.txt nor on the machine's image"
    ]
    assert wheel_list_problems(pins | {"six": "1.16.0"}) == [
        "six==1.16.0 is neither in setup.cfg nor required by a listed package"
    ]


def test_a_missing_or_second_wheel_is_named_with_the_fetch_command(tmp_path):
    for name, version in wheel_list().items():
        (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").touch()
    assert len(wheel_files(tmp_path)) == len(wheel_list())
    (tmp_path / "trl-1.15.0-py3-none-any.whl").touch()
    (tmp_path / f"av-{wheel_list()['av']}-py3-none-any.whl").unlink()
    with pytest.raises(SystemExit, match=r"trl==1.16.0 \(found: 1.15.0, 1.16.0\); av==15.1.0 \(found: none\)"):
        wheel_files(tmp_path)
    with pytest.raises(SystemExit, match=re.escape(f"check.py --fetch {tmp_path}")):
        wheel_files(tmp_path)


def test_the_image_packages_are_checked_against_setup_cfg():
    # this environment is made from setup.cfg: nothing to say; a planted old transformers and a missing peft are named
    import importlib.metadata as metadata

    assert image_problems() == []

    def versions(name):
        if name == "peft":
            raise metadata.PackageNotFoundError(name)
        return "5.16.0" if name == "transformers" else metadata.version(name)

    assert image_problems(versions) == [
        "setup.cfg's transformers<6,>=5.17.0 is installed as 5.16.0",
        "setup.cfg's peft<1,>=0.17 is not installed",
    ]
