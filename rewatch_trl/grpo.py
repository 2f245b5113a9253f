"""GRPO on videos from a YAML recipe:

accelerate launch --config_file accelerate_configs/zero3.yaml -m rewatch_trl.grpo --config recipes/grpo.yaml
"""

import logging
import os
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, TrlParser, get_peft_config

from rewatch_trl.configs import GRPOConfig, ScriptArguments
from rewatch_trl.prompts import VideoSettings


logger = logging.getLogger(__name__)


def load_train_dataset(script_args: ScriptArguments):
    """The training rows, validated, with a `prompt` column TRL needs (added by `add_prompts`)."""
    from rewatch_trl.data import load_prepared, load_qa

    name = script_args.dataset_name
    if name is None:
        raise ValueError("the recipe needs `dataset_name`: a prepared dataset directory, a QA JSONL or a Hub id")
    if str(name).endswith((".jsonl", ".json")):
        dataset, _ = load_qa(name, script_args.captions, script_args.video_root, script_args.skip_invalid)
        return dataset
    return load_prepared(name, script_args.dataset_train_split)


def add_prompts(dataset, collator):
    """Add the `prompt` column TRL's trainer reads: the seed's chat messages of each row."""
    return dataset.map(lambda row: {"prompt": collator.messages(row)}, desc="building prompts")


def load_model(model_args: ModelConfig, training_args: GRPOConfig):
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    return AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
    )


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig, video_args: VideoSettings):
    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.data import video_root_of
    from rewatch_trl.rewards import get_reward_funcs
    from rewatch_trl.trainer import VideoGRPOTrainer

    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if model_args.model_name_or_path is None:
        raise ValueError("the recipe needs `model_name_or_path`")
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, padding_side="left"
    )
    video_root = video_root_of(script_args.dataset_name, script_args.video_root)
    collator = VideoCollator(processor, video_args, video_root)
    dataset = add_prompts(load_train_dataset(script_args), collator)
    judge_options = {
        key: value
        for key, value in {
            "base_url": script_args.judge_base_url,
            "model": script_args.judge_model,
            "max_concurrency": script_args.judge_max_concurrency,
        }.items()
        if value is not None
    }
    reward_funcs = get_reward_funcs(script_args.reward_funcs, **judge_options)

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.resume_from_checkpoint is None:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
    checkpoint = training_args.resume_from_checkpoint or last_checkpoint
    if checkpoint:
        logger.info("resuming from %s", checkpoint)

    trainer = VideoGRPOTrainer(
        model=load_model(model_args, training_args),
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        video_settings=video_args,
        video_root=video_root,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name, tags=["rewatch-trl"])
    return trainer


def parse_args(argv: list[str] | None = None):
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig, VideoSettings))
    return parser.parse_args_and_config(args=argv)


if __name__ == "__main__":
    main(*parse_args(sys.argv[1:]))
