"""Every feature of `VideoGRPOTrainer` at once (`features.py`), through the GRPO entry point: each attached by its
recipe key, each logging its metrics, none in another's way. A world with one broken video (its header reads, its
frames do not), a judged reward on a judge that answers, T-GRPO, the length band, dynamic sampling and the logged
rollouts; then agentic mode with those it composes with (T-GRPO it refuses, by name)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_judge import serve
from test_mixture import tiny_mix_arguments
from test_video import corrupt_frames

from rewatch_trl.agentic import AgenticRollouts
from rewatch_trl.dynamic import DynamicSampling
from rewatch_trl.grpo import main, parse_args
from rewatch_trl.judge_watch import JudgeWatch
from rewatch_trl.temporal import LengthBand, TemporalContrast
from rewatch_trl.undecodable import LeaveOutUndecodable


BROKEN = "synthetic_002.mp4"


def broken_world(world, tmp_path):
    """A copy of `world` whose video `BROKEN` no longer decodes."""
    root = tmp_path / "world"
    shutil.copytree(world.root, root)
    corrupt_frames(root / "videos" / BROKEN)
    paths = ("video_dir", "qa_path", "captions_path", "video_r1_path", "longvideo_reason_path")
    moved = {name: root / getattr(world, name).relative_to(world.root) for name in paths}
    return dataclasses.replace(world, root=root, **moved)


def logged_steps(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "reward" in entry]


def test_every_feature_at_once_trains_and_logs_each_features_metrics(tiny_world, sft_model, tmp_path, launcher):
    world = broken_world(tiny_world, tmp_path)
    server = serve()
    url = next(server)
    try:
        arguments = tiny_mix_arguments("grpo_peers", world, sft_model, tmp_path, launcher)
        config = Path(arguments[1])
        text = config.read_text().replace(
            "reward_funcs: [format, accuracy, temporal_grounding, observation, length_band]",
            "reward_funcs: [format, accuracy, temporal_grounding, observation_judge, length_band]",
        )
        config.write_text(text + f"judge_base_url: {url}\njudge_model: judge\n")
        arguments += ["--max_steps", "2", "--num_generations", "2", "--log_completions", "true"]
        trainer = main(*parse_args(arguments + ["--log_rollouts", "true", "--num_completions_to_print", "4"]))
    finally:
        next(server, None)
    kinds = [type(feature) for feature in trainer.features]
    assert kinds == [LeaveOutUndecodable, JudgeWatch, LengthBand, TemporalContrast, DynamicSampling]
    steps = logged_steps(trainer)
    assert len(steps) == 2
    for entry in steps:
        assert 0 <= entry["temporal/shuffled_accuracy"] <= 1 and 0 <= entry["temporal/bonus_fraction"] <= 1
        assert entry["dynamic/kept_zero_variance_groups"] <= entry["dynamic/zero_variance_groups"]
        assert entry["judge/failed_fraction"] == 0.0 and entry["judge/unscored_rows"] == 0
        assert "rewards/length_band_reward/mean" in entry and "sharing/videos_encoded" in entry
        assert entry["data/undecodable"] >= 0
    assert sum(entry["data/undecodable"] for entry in steps) > 0  # the broken video's rows, left out
    out = tmp_path / "run"
    (record,) = [json.loads(line) for line in (out / "undecodable.jsonl").read_text().splitlines()]
    assert record["path"].endswith(BROKEN)
    logged = sorted((out / "rollouts").glob("step-*.jsonl"))
    assert [path.name for path in logged] == ["step-000001.jsonl", "step-000002.jsonl"]
    assert all(len(path.read_text().splitlines()) == 2 for path in logged)  # a line a prompt: 4 rows, G = 2


def test_agentic_mode_with_the_features_it_composes_with(tiny_world, sft_model, tmp_path, launcher):
    world = broken_world(tiny_world, tmp_path)
    out = tmp_path / "agentic"
    settings = {"model_name_or_path": sft_model, "dynamic_sampling": "true", "max_resample_rounds": 1}
    settings |= {"log_completions": "true", "log_rollouts": "true", "num_generations": 2, "max_completion_length": 24}
    arguments = launcher.recipe_args(world, out, "grpo", "grpo_rewatch", save_strategy="no", **settings)
    trainer = main(*parse_args(arguments))
    kinds = [type(feature) for feature in trainer.features]
    assert kinds == [LeaveOutUndecodable, AgenticRollouts, DynamicSampling]
    steps = logged_steps(trainer)
    assert len(steps) == 2
    for entry in steps:
        assert "rewatch/clips_per_completion" in entry and "dynamic/resample_rounds" in entry
    assert sum(entry["data/undecodable"] for entry in steps) > 0
    logged = sorted((out / "rollouts").glob("step-*.jsonl"))
    assert [path.name for path in logged] == ["step-000001.jsonl", "step-000002.jsonl"]
    # a logged group of the broken video: kept, its frames none, its decoder's error said
    groups = [json.loads(line) for path in logged for line in path.read_text().splitlines()]
    broken = [group["media"] for group in groups if group["media"]["path"].endswith(BROKEN)]
    assert broken and all(media["frames"] == [] and "cannot decode" in media["error"] for media in broken)
    # the one it refuses, by name, before anything trains
    refused = launcher.recipe_args(world, tmp_path / "refused", "grpo", "grpo_rewatch", temporal_contrast="true")
    with pytest.raises(NotImplementedError, match="temporal_contrast with rewatch_mode='agentic'"):
        main(*parse_args(refused + ["--accuracy_reward", "accuracy"]))
