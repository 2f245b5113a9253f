"""SFT cold start on video conversations (TRL `SFTTrainer`), from a YAML recipe:

    accelerate launch --config_file accelerate_configs/zero3.yaml -m rewatch_trl.sft --config recipes/sft.yaml

A row is a seed-format row plus its assistant target (`response`: a ReAct trace, a caption or a direct
answer). The loss covers the assistant tokens only; the batches come from the `VideoCollator`. With
`sequence_parallel_size: N`, groups of N processes split each row's frames and tokens (`VideoSFTTrainer`).
"""

import logging
import sys

from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import RandomSampler
from transformers import set_seed
from trl import ModelConfig, SFTTrainer, TrlParser, get_peft_config

from rewatch_trl.collator import VideoCollator
from rewatch_trl.configs import ScriptArguments, SFTConfig
from rewatch_trl.families import family_of
from rewatch_trl.image import LoadedImage
from rewatch_trl.prompts import VideoSettings
from rewatch_trl.rewatch import RewatchSettings, check_clip_layout, shown_clips
from rewatch_trl.sequence_parallel import GroupSampler, SequenceGroup, SequenceParallel
from rewatch_trl.trl_surface import check_trl
from rewatch_trl.video import DecodeError, UndecodableVideo, sample_clip, write_undecodable


logger = logging.getLogger(__name__)


class SFTVideoCollator:
    """Seed-format rows → prompt + `response_field` with labels on the response tokens only. With agentic
    `rewatch` settings, each action's clip is shown after it (`rewatch.shown_clips`), as the rollouts will show it;
    its tokens carry no labels. With a tolerant `collator` (`tolerate_undecodable`), a row whose video or clip
    fails to decode gets no labels, and with `output_dir` the file is written to its `undecodable.jsonl` (step
    null: batches are built ahead of their steps)."""

    def __init__(
        self,
        collator: VideoCollator,
        response_field: str = "response",
        rewatch: RewatchSettings | None = None,
        output_dir=None,
    ):
        self.collator = collator
        self.response_field = response_field
        self.rewatch = rewatch if rewatch is not None and rewatch.agentic else None
        if self.rewatch is not None:
            check_clip_layout(collator.processor)
        self.output_dir = output_dir
        self._written: set[str] = set()

    def __call__(self, rows: list[dict]):
        missing = [row.get("problem_id") for row in rows if not isinstance(row.get(self.response_field), str)]
        if missing:
            raise ValueError(f"rows {missing} have no {self.response_field!r} (the SFT target): set `response_field`")
        answers = [row[self.response_field] for row in rows]
        if self.rewatch is None:
            batch = self.collator(rows, answers=answers)
        else:
            batch = self.collator(rows, *self._with_clips(rows, answers))
        self._write_undecodable()
        return batch

    def _with_clips(self, rows: list[dict], answers: list[str]):
        settings = self.rewatch.clip_settings(self.collator.settings)
        shown, clips = [], []
        for answer, video in zip(answers, self.collator.visuals(rows), strict=True):
            if isinstance(video, LoadedImage):  # an image has no clip to re-watch
                shown.append(answer)
                clips.append([])
                continue
            text, spans = shown_clips(answer, video.duration, self.rewatch.max_rewatches)
            try:
                if isinstance(video, UndecodableVideo):
                    raise DecodeError(video.error)
                row_clips = [
                    sample_clip(video.path, start, end, settings, self.collator.cache) for start, end in spans
                ]
            except DecodeError as error:
                if not self.collator.tolerate_undecodable:
                    raise
                self.collator.failed(video.path, error)  # the row's labels go (`VideoCollator.__call__`)
                text, row_clips = answer, []
            shown.append(text)
            clips.append(row_clips)
        return shown, clips

    def _write_undecodable(self) -> None:
        if self.output_dir is None:
            return
        new = [video.record(None) for path, video in self.collator.undecodable.items() if path not in self._written]
        write_undecodable(self.output_dir, new)
        self._written |= {record["path"] for record in new}


class VideoSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose training passes, with `sequence_parallel_size: N`, are split across groups of N processes
    that hold the same rows (`sequence_parallel.py`: the sampler, the frames, the tokens; evaluation runs whole on
    each process); with N = 1, TRL's own.

    Example:
    ```python
    >>> trainer = VideoSFTTrainer(model=model, args=SFTConfig(..., sequence_parallel_size=2), ...)  # doctest: +SKIP
    ```
    """

    def __init__(self, *args, **kwargs):
        check_trl()
        super().__init__(*args, **kwargs)
        check_trl(self)
        self.sequence_group = SequenceGroup.build(self.args.sequence_parallel_size)
        self._sequence_parallel = None
        if self.sequence_group.size > 1:
            family_of(self.model).check("sequence_parallel")
            self._sequence_parallel = SequenceParallel(self.model, self.sequence_group)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if self.sequence_group.size == 1:
            return sampler
        if sampler is None:
            raise ValueError("sequence_parallel_size > 1 deals each group the same rows: it needs a map-style dataset")
        if type(sampler) is RandomSampler and self.args.accelerator_config.use_seedable_sampler:
            # what accelerate makes of a plain random sampler, which it no longer sees inside the group sampler: one
            # order on every process, that of a run without sequence parallelism
            sampler = SeedableRandomSampler(
                data_source=sampler.data_source, num_samples=sampler._num_samples, data_seed=self.args.data_seed
            )
        return GroupSampler(sampler, self._train_batch_size, self.sequence_group.size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._sequence_parallel is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        counted = self._total_train_tokens
        with self._sequence_parallel.splitting():
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL counted every process's tokens: the processes of a group hold the same ones
        self._total_train_tokens = counted + (self._total_train_tokens - counted) // self.sequence_group.size
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result


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
    model = load_model(model_args)
    if training_args.agentic:  # a family not wired for re-watching is refused by name
        family_of(model).check("agentic")
    trainer = VideoSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=SFTVideoCollator(
            VideoCollator(processor, video_args, video_root, tolerate_undecodable=True),
            script_args.response_field,
            training_args,  # its re-watch settings
            training_args.output_dir,
        ),
        peft_config=get_peft_config(model_args),
    )
    train_and_save(trainer, processor, script_args)
    return trainer


def parse_args(argv: list[str] | None = None):
    return TrlParser((ScriptArguments, SFTConfig, ModelConfig, VideoSettings)).parse_args_and_config(args=argv)


if __name__ == "__main__":
    from rewatch_trl.training import leave_together

    leave_together(main(*parse_args(sys.argv[1:])))
