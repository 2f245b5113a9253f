"""SFT cold start on video conversations (TRL `SFTTrainer`), from a YAML recipe:

    accelerate launch --config_file accelerate_configs/zero3.yaml -m rewatch_trl.sft --config recipes/sft.yaml

A row is a seed-format row plus its assistant target (`response`: a ReAct trace, a caption or a direct
answer). The loss covers the assistant tokens only; the batches come from the `VideoCollator`.
"""

import logging
import sys

from transformers import set_seed
from trl import ModelConfig, SFTTrainer, TrlParser, get_peft_config

from rewatch_trl.collator import VideoCollator
from rewatch_trl.configs import ScriptArguments, SFTConfig
from rewatch_trl.prompts import VideoSettings
from rewatch_trl.rewatch import RewatchSettings, shown_clips
from rewatch_trl.video import sample_clip


logger = logging.getLogger(__name__)


class SFTVideoCollator:
    """Seed-format rows → prompt + `response_field` with labels on the response tokens only. With agentic
    `rewatch` settings, each action's clip is shown after it (`rewatch.shown_clips`), as the rollouts will show it;
    its tokens carry no labels."""

    def __init__(
        self, collator: VideoCollator, response_field: str = "response", rewatch: RewatchSettings | None = None
    ):
        self.collator = collator
        self.response_field = response_field
        self.rewatch = rewatch if rewatch is not None and rewatch.agentic else None

    def __call__(self, rows: list[dict]):
        missing = [row.get("problem_id") for row in rows if not isinstance(row.get(self.response_field), str)]
        if missing:
            raise ValueError(f"rows {missing} have no {self.response_field!r} (the SFT target): set `response_field`")
        answers = [row[self.response_field] for row in rows]
        if self.rewatch is None:
            return self.collator(rows, answers=answers)
        settings = self.rewatch.clip_settings(self.collator.settings)
        shown, clips = [], []
        for answer, video in zip(answers, self.collator.videos(rows), strict=True):
            text, spans = shown_clips(answer, video.duration, self.rewatch.max_rewatches)
            shown.append(text)
            clips.append([sample_clip(video.path, start, end, settings, self.collator.cache) for start, end in spans])
        return self.collator(rows, answers=shown, clips=clips)


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig, video_args: VideoSettings):
    from rewatch_trl.training import load_model, load_processor, load_train_dataset, train_and_save

    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    processor = load_processor(model_args, padding_side="right")
    dataset, video_root = load_train_dataset(script_args)
    if script_args.response_field not in dataset.column_names:
        raise ValueError(
            f"the dataset has no {script_args.response_field!r} column (the SFT target); it has "
            f"{', '.join(dataset.column_names)}"
        )
    trainer = SFTTrainer(
        model=load_model(model_args),
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=SFTVideoCollator(
            VideoCollator(processor, video_args, video_root),
            script_args.response_field,
            training_args,  # its re-watch settings
        ),
        peft_config=get_peft_config(model_args),
    )
    train_and_save(trainer, processor, script_args)
    return trainer


def parse_args(argv: list[str] | None = None):
    return TrlParser((ScriptArguments, SFTConfig, ModelConfig, VideoSettings)).parse_args_and_config(args=argv)


if __name__ == "__main__":
    main(*parse_args(sys.argv[1:]))
