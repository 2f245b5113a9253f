"""What the GRPO and SFT entry points share: model, processor and data loading, resuming, and finishing a run."""

import functools
import json
import logging
import os
import re

import torch
from accelerate import PartialState
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import ModelConfig, get_quantization_config

from rewatch_trl.configs import ScriptArguments
from rewatch_trl.positions import use_original_rope


logger = logging.getLogger(__name__)


class RunStopped(RuntimeError):
    """A run that stopped before `max_steps` for a reason it states (its judge down): it resumes when launched again."""


CHECKPOINT = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
# transformers.trainer.TRAINER_STATE_NAME (not imported: `infer` loads its model through this module, not the trainer)
TRAINER_STATE_NAME = "trainer_state.json"


def load_model(model_args: ModelConfig):
    """The policy (a Qwen2.5-VL-style image-text-to-text model) as the recipe names it, with the original M-RoPE
    position rule (`positions.use_original_rope`)."""
    if model_args.model_name_or_path is None:
        raise ValueError("the recipe needs `model_name_or_path`")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    # `load_in_4bit` / `load_in_8bit` and their bitsandbytes options, as TRL's scripts read them; a k-bit model
    # sits whole on this process's device
    quantization = get_quantization_config(model_args)
    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization,
        device_map=None if quantization is None else {"": PartialState().local_process_index},
    )
    keep_used_weight_conversions(model)
    return use_original_rope(model)


def keep_used_weight_conversions(model) -> None:
    """Keep, of the checkpoint conversions a model was loaded with, those its checkpoint used, as transformers' own
    loader does: under ZeRO-3 (transformers 5.25) it keeps them all, and saving reverts the unused ones too (Qwen2.5-VL
    written as `model.model.layers.*`, which no loader reads)."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions and all(hasattr(conversion, "was_used") for conversion in conversions):
        model._weight_conversions = [conversion for conversion in conversions if conversion.was_used()]


def load_processor(model_args: ModelConfig, padding_side: str):
    if model_args.model_name_or_path is None:
        raise ValueError("the recipe needs `model_name_or_path`")
    return AutoProcessor.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, padding_side=padding_side
    )


def load_train_dataset(script_args: ScriptArguments, refuse_images_because: str | None = None):
    """The training rows, validated (a QA file (+ captions), a prepared directory, a Hub dataset id, or a mixture),
    and where their media are; every row's video (or image) is checked to be there before any model is loaded.
    With `refuse_images_because`, image rows are an error that says so and how to leave them out."""
    from rewatch_trl.data import check_videos, load_prepared, refuse_images, video_root_of

    name = script_args.dataset_name
    if script_args.dataset_mixture is not None:
        from rewatch_trl.mixture import DatasetMixture, load_mixture

        if name is not None:
            raise ValueError("the recipe gives both `dataset_name` and `dataset_mixture`: keep one")
        dataset = load_mixture(DatasetMixture.from_dict(script_args.dataset_mixture), script_args.skip_invalid)
        if refuse_images_because:
            refuse_images(dataset, "dataset_mixture", refuse_images_because)
        check_videos(dataset, None, "dataset_mixture")  # its media paths are absolute
        return dataset, None
    if name is None:
        raise ValueError(
            "the recipe needs `dataset_name` (a prepared dataset directory, a QA file or a Hub id) or `dataset_mixture`"
        )
    dataset = load_prepared(
        name,
        script_args.dataset_train_split,
        script_args.captions,
        script_args.video_root,
        script_args.skip_invalid,
        script_args.dataset_format,
    )
    video_root = video_root_of(name, script_args.video_root, dataset)
    if refuse_images_because:
        refuse_images(dataset, name, refuse_images_because)
    check_videos(dataset, video_root, name)
    return dataset, video_root


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: the one the recipe names, else the last one of `output_dir` written whole (a
    killed run picks up where it stopped when launched again)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if os.path.isdir(training_args.output_dir):
        return last_whole_checkpoint(training_args.output_dir)
    return None


def last_whole_checkpoint(output_dir) -> str | None:
    """The last `checkpoint-N` of `output_dir` that was written whole. transformers writes a checkpoint in place and
    its `trainer_state.json` last: a run killed while writing one leaves it without that file, or with it cut short
    (`get_last_checkpoint` would still return it, and the resume would fail on it). Such a checkpoint is skipped,
    and said."""
    from pathlib import Path

    steps = {}
    for path in Path(output_dir).iterdir():
        match = CHECKPOINT.fullmatch(path.name)
        if match and path.is_dir():
            steps[int(match.group(1))] = path
    for step in sorted(steps, reverse=True):
        state = steps[step] / TRAINER_STATE_NAME
        try:
            json.loads(state.read_text())
        except FileNotFoundError:
            reason = f"no {TRAINER_STATE_NAME} (transformers writes it last)"
        except (OSError, ValueError) as error:
            reason = f"its {TRAINER_STATE_NAME} is cut short ({error})"
        else:
            return str(steps[step])
        logger.warning("not resuming from %s: it was not written whole, %s", steps[step], reason)
    return None


MODEL_FILES = ("config.json", "generation_config.json", "model*.safetensors*", "adapter_*")


def copy_model_files(checkpoint, output_dir) -> None:
    """The model a checkpoint holds (weights, or a PEFT adapter, and their configs) into `output_dir`."""
    import shutil
    from pathlib import Path

    for pattern in MODEL_FILES:
        for path in Path(checkpoint).glob(pattern):
            shutil.copy2(path, Path(output_dir) / path.name)


def save_published(directory, model) -> None:
    """Rewrite the safetensors of `model` saved in `directory` with its family's `published_transposed` weights in
    the published layout: transformers 5.17 saves them as it holds them, which vLLM cannot load, nor transformers
    itself under ZeRO-3 (whose loader swaps them whatever their shape). Only a weight saved as the model holds it is
    swapped: writing twice changes nothing. transformers loads either layout elsewhere."""
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file

    from rewatch_trl.families import family_of

    transposed = family_of(model).published_transposed
    if not transposed:
        return
    # under ZeRO-3 a parameter holds an empty placeholder and its whole shape in `ds_shape`
    held = {
        name: tuple(getattr(p, "ds_shape", p.shape))
        for name, p in model.named_parameters()
        if name.endswith(transposed)
    }
    for path in Path(directory).glob("*.safetensors"):
        with safe_open(path, "pt") as file:
            names = list(file.keys())
            if not any(held.get(name) == tuple(file.get_slice(name).get_shape()) for name in names):
                continue
            tensors = {name: file.get_tensor(name) for name in names}
        for name, tensor in tensors.items():
            if held.get(name) == tuple(tensor.shape):
                tensors[name] = tensor.transpose(-1, -2).contiguous()
        save_file(tensors, path, metadata={"format": "pt"})


def load_checkpoint_weights(trainer, load_from_checkpoint, checkpoint: str, model=None) -> None:
    """The Trainer's `_load_from_checkpoint` (`load_from_checkpoint`) for a checkpoint whose model was saved whole
    by `save_pretrained`: transformers writes it under the checkpoint format's names (Qwen2.5-VL's legacy
    `model.layers.*`, `visual.*`), which the Trainer's `load_state_dict(strict=False)` matched to none of the
    model's: a resumed run went on from its base weights, silently. The names are mapped back through transformers'
    own conversion of this model, and a weight the checkpoint lacks is an error. DeepSpeed, FSDP and adapter
    checkpoints take the Trainer's own path."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers.core_model_loading import revert_weight_conversion

    model = model if model is not None else trainer.model
    files = sorted(Path(checkpoint).glob("model*.safetensors"))
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or hasattr(model, "peft_config") or not files:
        return load_from_checkpoint(checkpoint, model)
    live = model.state_dict()
    names = {id(tensor): name for name, tensor in live.items()}
    saved_as = {saved: names[id(tensor)] for saved, tensor in revert_weight_conversion(model, dict(live)).items()}
    state = {}
    for path in files:
        state |= {saved_as.get(name, name): tensor for name, tensor in load_file(path).items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"{checkpoint} holds no weights for {len(result.missing_keys)} of the model's, e.g. "
            f"{', '.join(result.missing_keys[:3])}: it is not a checkpoint of this model"
        )


def train_and_save(trainer, processor, script_args: ScriptArguments) -> None:
    """Train (resuming where a killed run stopped), then save the model, its processor (left-padded, ready for
    generation) and the state; push to the Hub if asked."""
    args = trainer.args
    checkpoint = resume_checkpoint(args)
    done = None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
        done = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
    if done is not None and 0 < args.max_steps <= done.global_step:
        # The run was killed after its last checkpoint: finish it from there (transformers would take one step
        # past `max_steps` when resumed at it). The checkpoint's model files are the final model: copied, not
        # loaded (a ZeRO-3 model, partitioned and not yet prepared, could not take them).
        trainer.state = done
        if trainer.accelerator.is_main_process:
            copy_model_files(checkpoint, args.output_dir)
    else:
        if checkpoint:
            trainer._load_from_checkpoint = functools.partial(
                load_checkpoint_weights, trainer, trainer._load_from_checkpoint
            )
        result = trainer.train(resume_from_checkpoint=checkpoint)
        outage = next((f.outage for f in getattr(trainer, "features", []) if getattr(f, "outage", None)), None)
        if outage:  # its checkpoint is saved; the run is not done
            raise RunStopped(outage)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        # `_internal_call`: transformers' own save would push too; the run's one push is the last step below
        trainer.save_model(args.output_dir, _internal_call=True)
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        save_published(args.output_dir, trainer.accelerator.unwrap_model(trainer.model))
        processor.tokenizer.padding_side = "left"
        processor.save_pretrained(args.output_dir)
    if args.push_to_hub:
        from rewatch_trl.data import HubError, hub_failures

        try:
            with hub_failures(f"the Hub model {trainer.hub_model_id}", args.output_dir, "the model"):
                trainer.push_to_hub(dataset_name=script_args.dataset_name, tags=["rewatch-trl"])
        except HubError as error:  # the run is done and saved: the push alone can be done again (`hf upload`)
            logger.error("%s", error)


def leave_together(trainer) -> None:
    """The end of a launched run: every process waits for the others, then the process groups (the sequence-parallel
    ones too) are destroyed. A process that exits with its gloo groups alive tears their threads down at interpreter
    exit, which aborts it ("terminate called without an active exception") while another process may still be
    saving. A colocated vLLM engine is shut down first: its teardown destroys its own groups (and the default one),
    which it would otherwise find destroyed at exit ("Invalid process group specified")."""
    trainer.accelerator.wait_for_everyone()
    engine = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    if engine is not None:
        engine.llm_engine.engine_core.shutdown()
    trainer.accelerator.end_training()
