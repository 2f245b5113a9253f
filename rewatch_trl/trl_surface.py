"""The part of TRL this project leans on beyond its public API: each private `GRPOTrainer` method overridden, each
private attribute read or written (and `SFTTrainer`'s, for sequence parallelism), why, and what a TRL that renames
it would break. A maintainer checks this list at each TRL upgrade; the trainers check it at start (`check_trl`), so a
TRL outside the tested range gets one clear line naming that range instead of a traceback from deep inside a step.

Example:
```python
>>> from rewatch_trl.trl_surface import TESTED_TRL, missing
>>> str(TESTED_TRL)
'<1.17,>=1.16.0'
>>> missing()  # the TRL installed here has every piece
[]
```
"""

import logging
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import Version


logger = logging.getLogger(__name__)

# The TRL releases both test tiers ran (`make test`); setup.cfg admits the whole 1.x line, checked at start here.
TESTED_TRL = SpecifierSet(">=1.16.0,<1.17")


@dataclass(frozen=True)
class Piece:
    """One private piece of TRL: `owner` (a class, `GRPOTrainer`, `SFTTrainer` or `VLLMGeneration`, or a module's
    dotted path), `name`, how it is used (`overridden`, `called`, `read`, `written`), whether it exists on the class
    or only on an instance after `__init__` (`instance`), whether only generation with vLLM uses it (`vllm`), and
    why; `breaks` says what a rename would break."""

    owner: str
    name: str
    use: str
    why: str
    breaks: str
    instance: bool = False
    vllm: bool = False


SURFACE = (
    # GRPOTrainer's private methods, each overridden calling super()
    Piece(
        "GRPOTrainer",
        "_tokenize_prompts",
        "overridden",
        "prompts go through the VideoCollator (frames, the video's tokens), not the processor's own video loading",
        "prompts lose their videos",
    ),
    Piece(
        "GRPOTrainer",
        "_generate_single_turn",
        "overridden",
        "vLLM requests carry each row's frames; agentic rounds stop at </action>; a share of the rows a process "
        "under sequence parallelism (`split`)",
        "generation without the video",
    ),
    Piece(
        "GRPOTrainer",
        "_get_train_sampler",
        "overridden",
        "sequence parallelism: TRL's sampler, each process's batch repeated for the processes of its group",
        "the processes of a group training on different rows",
    ),
    Piece(
        "GRPOTrainer",
        "_generate",
        "overridden",
        "the features' `generated` point (`features.py`): broken videos' rows out of the loss, T-GRPO's shuffled "
        "rollouts; agentic mode's texts for the rewards",
        "broken videos stop the run; T-GRPO; agentic rewards",
    ),
    Piece(
        "GRPOTrainer",
        "_generate_and_score_completions",
        "overridden",
        "one `GenerationBatch` a generation; the video inputs ride through TRL's shuffle and split; the features' "
        "`scored` point (dynamic sampling replaces flat groups)",
        "the loss pass without the video",
    ),
    Piece(
        "GRPOTrainer",
        "_calculate_rewards",
        "overridden",
        "the features' `rewarded` point: left-out rows, the judges watched, the length band, T-GRPO's bonus",
        "those features",
    ),
    Piece(
        "GRPOTrainer",
        "_get_per_token_logps_and_entropies",
        "overridden",
        "every log-prob pass (old, reference, policy) gets the video inputs and the sharing rows",
        "log-probs without the video",
    ),
    Piece(
        "GRPOTrainer",
        "_compute_loss",
        "overridden",
        "the loss pass gets the batch's video inputs",
        "the loss without the video",
    ),
    Piece(
        "GRPOTrainer",
        "_save_checkpoint",
        "overridden",
        "a checkpoint inside a generation keeps TRL's buffer (`generation_buffer.py`)",
        "resuming inside a generation",
    ),
    Piece(
        "GRPOTrainer",
        "_load_optimizer_and_scheduler",
        "overridden",
        "the buffer restored on resume (TRL's own resume hook)",
        "resuming inside a generation",
    ),
    # GRPOTrainer's private state
    Piece(
        "GRPOTrainer",
        "_buffered_inputs",
        "written",
        "the generation a checkpoint inside a generation resumes",
        "resuming inside a generation",
        instance=True,
    ),
    Piece(
        "GRPOTrainer",
        "_step",
        "written",
        "the micro-step count a checkpoint inside a generation saves and a resume restores",
        "resuming inside a generation",
        instance=True,
    ),
    Piece("GRPOTrainer", "_metrics", "written", "every feature's logged metrics", "their logs", instance=True),
    Piece(
        "GRPOTrainer",
        "_logs",
        "read",
        "the rollout pages and dynamic sampling's rows trained on",
        "the rollout viewer",
        instance=True,
    ),
    Piece(
        "GRPOTrainer",
        "_tokenizer",
        "read",
        "the pad id of merged batches; stop strings of agentic rounds",
        "dynamic sampling, agentic mode",
        instance=True,
    ),
    Piece(
        "GRPOTrainer",
        "_last_loaded_step",
        "written",
        "an agentic rollout's own weight sync tells TRL the engine is current",
        "a second sync per step",
        instance=True,
        vllm=True,
    ),
    Piece(
        "GRPOTrainer",
        "vllm_generation",
        "read",
        "the colocated engine wrapped by VideoLLM and its weight sync replaced",
        "vLLM generation",
        instance=True,
        vllm=True,
    ),
    # TRL's colocated vLLM generation
    Piece(
        "VLLMGeneration",
        "_iter_named_params",
        "called",
        "the policy's weights streamed into vLLM's reload",
        "the weight sync",
        vllm=True,
    ),
    # SFTTrainer's, with sequence parallelism (`sft.VideoSFTTrainer`)
    Piece(
        "SFTTrainer",
        "_get_train_sampler",
        "overridden",
        "sequence parallelism: each process's batch repeated for the processes of its group",
        "the processes of a group training on different rows",
    ),
    Piece(
        "SFTTrainer",
        "_total_train_tokens",
        "written",
        "sequence parallelism: the tokens of a group's rows counted once (TRL counts every process's)",
        "`num_tokens` logged N times over",
        instance=True,
    ),
    Piece(
        "VLLMGeneration",
        "sync_weights",
        "written",
        "replaced by one reload vLLM's CPU build also takes",
        "the weight sync",
        vllm=True,
    ),
    Piece(
        "VLLMGeneration",
        "vllm_client",
        "written",
        "server mode: the main process's client wrapped to send each prompt with its videos' tensors "
        "(`vllm_server.VideoServerClient`)",
        "server generation without the video",
        instance=True,
        vllm=True,
    ),
    Piece(
        "VLLMGeneration",
        "tp_group",
        "read",
        "colocated tensor parallelism: the group whose processes gather their prompts for one engine; their videos "
        "are gathered in it alike (`VideoLLM.serving`)",
        "tensor parallel generation without the group's videos",
        instance=True,
        vllm=True,
    ),
    Piece(
        "trl.generation.vllm_client",
        "VLLMClient",
        "written",
        "server mode with `vllm_weight_sync: reload`: its `init_communicator` (NCCL, CUDA only) skipped while the "
        "trainer builds it",
        "server mode without NCCL (CPU)",
        vllm=True,
    ),
    Piece(
        "trl.generation.vllm_generation",
        "LLM",
        "written",
        "the engine built in the trainer's dtype (TRL passes none)",
        "fp32 log-prob checks; the engine's dtype",
        vllm=True,
    ),
)


def _owner(piece: Piece):
    import importlib

    if piece.owner == "GRPOTrainer":
        from trl import GRPOTrainer

        return GRPOTrainer
    if piece.owner == "SFTTrainer":
        from trl import SFTTrainer

        return SFTTrainer
    if piece.owner == "VLLMGeneration":
        return importlib.import_module("trl.generation.vllm_generation").VLLMGeneration
    return importlib.import_module(piece.owner)


def missing(trainer=None) -> list[str]:
    """The pieces of `SURFACE` this TRL lacks, as `owner.name`: those on classes and modules, and with `trainer` (a
    constructed `GRPOTrainer` or `SFTTrainer`) those its class sets on the instance; vLLM's pieces where vLLM is
    installed (or, with `trainer`, where it generates with vLLM)."""
    from trl.import_utils import is_vllm_available

    with_vllm = is_vllm_available() if trainer is None else getattr(trainer, "use_vllm", False)
    absent = []
    for piece in SURFACE:
        if piece.vllm and not with_vllm:
            continue
        if piece.instance:
            if trainer is None or not isinstance(trainer, _owner(piece)):
                continue
            where = trainer
        else:
            try:
                where = _owner(piece)
            except (ImportError, AttributeError):
                absent.append(f"{piece.owner}.{piece.name}")
                continue
        if not hasattr(where, piece.name):
            absent.append(f"{piece.owner}.{piece.name}")
    return absent


def check_trl(trainer=None) -> None:
    """Warn (one line) when the installed TRL is outside `TESTED_TRL`; raise, naming the tested range and the pieces,
    when it lacks any piece of `SURFACE` (see `missing`)."""
    import trl

    version = Version(trl.__version__)
    absent = missing(trainer)
    if absent:
        raise RuntimeError(
            f"TRL {version} lacks what rewatch-trl overrides or reads ({', '.join(absent)}): rewatch-trl is tested "
            f"with trl{TESTED_TRL}; install a TRL in that range (rewatch_trl/trl_surface.py lists what it uses)"
        )
    if trainer is None and version not in TESTED_TRL:
        logger.warning(
            "TRL %s is outside the range rewatch-trl is tested with (trl%s): its private methods may behave "
            "differently (rewatch_trl/trl_surface.py lists what rewatch-trl uses)",
            version,
            TESTED_TRL,
        )
