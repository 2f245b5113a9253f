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
    }
    return {key: value for key, value in options.items() if value is not None}


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig, video_args: VideoSettings):
    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.rewards import get_reward_funcs
    from rewatch_trl.trainer import VideoGRPOTrainer
    from rewatch_trl.training import load_model, load_processor, load_train_dataset, train_and_save

    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    processor = load_processor(model_args, padding_side="left")
    dataset, video_root = load_train_dataset(script_args, images=False)
    dataset = add_prompts(dataset, VideoCollator(processor, video_args, video_root))
    trainer = VideoGRPOTrainer(
        model=load_model(model_args),
        reward_funcs=get_reward_funcs(script_args.reward_funcs, **judge_options(script_args)),
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
    from rewatch_trl.training import RunStopped

    try:
        main(*parse_args(sys.argv[1:]))
    except RunStopped as stopped:
        logger.error("%s", stopped)
        sys.exit(3)
