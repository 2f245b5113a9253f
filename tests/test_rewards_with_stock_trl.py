"""Our rewards plugged into stock `trl.GRPOTrainer` (not our subclass), on a tiny text-only model built in code."""

import math

import pytest
import torch
from datasets import Dataset


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_stock_grpo_trainer_logs_our_rewards(tmp_path):
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
