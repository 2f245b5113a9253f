"""Our rewards plugged into stock `trl.GRPOTrainer` (not our subclass), on a tiny text-only model built in code."""

import math

import pytest
import torch
from datasets import Dataset


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def stock_trainer(tmp_path):
    """Stock `trl.GRPOTrainer` with our format, MCQ, open-ended and grounding rewards, on a tiny text model; an MCQ
    row and an open-ended row."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from rewatch_trl.rewards import get_reward_funcs
    from rewatch_trl.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    problem = "What color?\nA: red\nB: blue"
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": problem}],
                "problem": problem,
                "answer": "A",
                "multiple_choice": True,
                "duration": 10,
            },
            {
                "prompt": [{"role": "user", "content": "Which way?"}],
                "problem": "Which way?",
                "answer": "left",
                "multiple_choice": False,
                "duration": 10,
            },
        ]
    )
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        save_strategy="no",
    )
    funcs = get_reward_funcs(["format", "mcq_accuracy", "open_ended_accuracy", "temporal_grounding"])
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    return trainer, tokenizer, dataset


def test_stock_grpo_trainer_logs_our_rewards(tmp_path):
    trainer, _, _ = stock_trainer(tmp_path)
    trainer.train()
    logs = trainer.state.log_history[0]
    for name in [
        "react_format_reward",
        "mcq_accuracy_reward",
        "open_ended_accuracy_reward",
        "temporal_grounding_reward",
    ]:
        value = logs[f"rewards/{name}/mean"]
        assert 0.0 <= value <= 1.0, name
    # random text never forms a ReAct trace: the format reward is exactly 0 on it
    assert logs["rewards/react_format_reward/mean"] == 0.0
    assert math.isfinite(logs["loss"])
    assert trainer.state.global_step == 1


# Planted completions: what each reward gives them, counted by hand (NaN: not applicable to the row)
NAN = float("nan")
PLANTED = [
    # the MCQ row (answer A, "A: red", duration 10 s)
    ("<action>Re-watch [00:02-00:04]</action><observation>red</observation><answer>A</answer>", [1, 1, NAN, 1]),
    ("<action>Re-watch [00:02-00:04]</action><observation>blue</observation><answer>(B)</answer>", [1, 0, NAN, 1]),
    ("<action>Re-watch [00:08-00:12]</action><observation>red</observation><answer>red</answer>", [1, 1, NAN, 0]),
    ("The answer is A", [0, 0, NAN, 0]),
    # the open-ended row (answer "left", duration 10 s)
    (
        "<action>Re-watch [00:01-00:03]</action><observation>it turns</observation><answer>left</answer>",
        [1, NAN, 1, 1],
    ),
    (
        "<action>Re-watch [00:01-00:03]</action><observation>it turns</observation><answer>to the left side</answer>",
        [1, NAN, 0.5, 1],
    ),  # "to left side" against "left": precision 1/3, recall 1
    ("<action>Re-watch [00:03-00:01]</action><observation>x</observation><answer>right</answer>", [1, NAN, 0, 0]),
    ("<answer>left</answer>", [0, NAN, 1, 0]),
]


def test_stock_trainer_scores_planted_completions_exactly(tmp_path):
    """TRL's own reward call (`_calculate_rewards`: every dataset column passed as keyword arguments) on planted
    completions gives the hand-counted value of each reward, row by row."""
    trainer, tokenizer, dataset = stock_trainer(tmp_path)
    inputs = [dataset[0]] * 4 + [dataset[1]] * 4
    completions = [[{"role": "assistant", "content": text}] for text, _ in PLANTED]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in PLANTED]
    rewards = trainer._calculate_rewards(inputs, [row["prompt"] for row in inputs], completions, ids)
    expected = torch.tensor([values for _, values in PLANTED], dtype=rewards.dtype)
    assert rewards.shape == (8, 4)
    assert torch.equal(rewards.isnan(), expected.isnan())
    assert torch.allclose(rewards.nan_to_num(-1), expected.nan_to_num(-1))


def test_trl_grpo_script_trains_with_our_rewards_by_import_path(tmp_path):
    """TRL's own `trl grpo` script, which takes reward functions as dotted import paths, trains a tiny text model
    saved to disk on a JSONL dataset with ours: no project code runs but the rewards."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    trainer, tokenizer, dataset = stock_trainer(tmp_path / "built")
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "data", tmp_path / "out"
    trainer.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir.mkdir()
    dataset.to_json(data_dir / "train.jsonl")
    paths = [f"rewatch_trl.rewards.{name}" for name in ("react_format_reward", "mcq_accuracy_reward")]
    paths.append("rewatch_trl.rewards.open_ended_accuracy_reward")
    command = [str(Path(sys.executable).parent / "trl"), "grpo", "--model_name_or_path", str(model_dir),
               "--dataset_name", str(data_dir), "--reward_funcs", *paths, "--output_dir", str(out),
               "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8",
               "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
               "--use_cpu", "true", "--dtype", "float32"]  # fmt: skip
    env = os.environ | {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [ast.literal_eval(line) for line in done.stdout.splitlines() if line.startswith("{'loss'")]
    assert len(steps) == 2
    for logs in steps:  # each reward by its own name, scored on its rows (a NaN mean: never applied)
        for path in paths:
            assert math.isfinite(float(logs[f"rewards/{path.rsplit('.', 1)[1]}/mean"])), path
        assert float(logs["rewards/react_format_reward/mean"]) == 0.0  # random text forms no ReAct trace
    assert (out / "model.safetensors").exists()
