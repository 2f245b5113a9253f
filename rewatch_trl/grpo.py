"""GRPO on videos from a YAML recipe:

accelerate launch --config_file accelerate_configs/zero3.yaml -m rewatch_trl.grpo --config recipes/grpo.yaml
"""

import logging
import sys

from transformers import set_seed
from trl import ModelConfig, TrlParser, get_peft_config

from rewatch_trl.configs import GRPOConfig, ScriptArguments
from rewatch_trl.prompts import VideoSettings


logger = logging.getLogger(__name__)


def add_prompts(dataset, collator):
    """Add the `prompt` column TRL's trainer reads: the seed's chat messages of each row."""
    return dataset.map(lambda row: {"prompt": collator.messages(row)}, desc="building prompts")


def judge_options(script_args: ScriptArguments) -> dict:
    options = {
        "base_url": script_args.judge_base_url,
        "model": script_args.judge_model,
        "max_concurrency": script_args.judge_max_concurrency,
        "verdict_request": script_args.judge_verdict_request,
    }
    return {key: value for key, value in options.items() if value is not None}


def images_not_wired(training_args: GRPOConfig) -> str | None:
    """Why a GRPO run of these settings cannot take image rows yet, or None. Agentic re-watching has no image path;
    under ZeRO-3, the vision tower must run as often on every process whatever its rows hold, which the shared
    features see to (`sharing.encode_items`)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    reasons = [
        ("rewatch_mode: agentic", training_args.agentic),
        (
            "ZeRO-3 without share_video_features",
            is_deepspeed_zero3_enabled() and not training_args.share_video_features,
        ),
    ]
    refused = [name for name, on in reasons if on]
    return f"GRPO does not train them with {' or '.join(refused)} yet" if refused else None


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig, video_args: VideoSettings):
    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.rewards import get_reward_funcs
    from rewatch_trl.trainer import VideoGRPOTrainer
    from rewatch_trl.training import load_model, load_processor, load_train_dataset, train_and_save

    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    processor = load_processor(model_args, padding_side="left")
    dataset, video_root = load_train_dataset(script_args, images_not_wired(training_args))
    dataset = add_prompts(dataset, VideoCollator(processor, video_args, video_root))
    trainer = VideoGRPOTrainer(
        model=load_model(model_args),
        reward_funcs=get_reward_funcs(
            script_args.reward_funcs, reward_kwargs=script_args.reward_kwargs, **judge_options(script_args)
        ),
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        video_settings=video_args,
        video_root=video_root,
    )
    train_and_save(trainer, processor, script_args)
    return trainer


def parse_args(argv: list[str] | None = None):
    return TrlParser((ScriptArguments, GRPOConfig, ModelConfig, VideoSettings)).parse_args_and_config(args=argv)


if __name__ == "__main__":
    from rewatch_trl.training import RunStopped, leave_together

    try:
        leave_together(main(*parse_args(sys.argv[1:])))
    except RunStopped as stopped:
        logger.error("%s", stopped)
        sys.exit(3)
