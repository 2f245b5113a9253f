"""vLLM's sleep mode where its CPU build refuses it (`enable_sleep_mode=True` is a configuration error there).

`SleepingLLM` is built as TRL builds its colocated `LLM(...)`. `sleep` is vLLM's own call (on the CPU build it
pauses the engine and resets its prefix, multimodal and encoder caches; the worker keeps its memory), and what a
GPU's level 2 does to the weights is modelled: they are gone until `wake_up(tags=["weights"])` and a reload, and
`generate` refuses to run on a sleeping engine or discarded weights. `events` records "sync", "generate" and
"sleep" in order.

As a script it runs `rewatch_trl.grpo` with TRL's `LLM` replaced by it, and writes each process's events to
`<output_dir>/sleep_events-<rank>.json`.
"""

import json
import os
import sys
from pathlib import Path


class SleepingLLM:
    def __init__(self, *args, enable_sleep_mode=False, **kwargs):
        import vllm

        self.llm = vllm.LLM(*args, **kwargs)
        self.events: list[str] = []
        self.asleep: set[str] = set()
        self.weights = True
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        reload = runner.reload_weights

        def reload_weights(*args, **kwargs):
            assert "weights" not in self.asleep, "weights loaded into a sleeping engine"
            self.events.append("sync")
            self.weights = True
            return reload(*args, **kwargs)

        runner.reload_weights = reload_weights

    def sleep(self, level: int = 1):
        self.events.append("sleep")
        self.llm.sleep(level=level)
        self.asleep = {"weights", "kv_cache"}
        self.weights = self.weights and level < 2

    def wake_up(self, tags: list[str] | None = None):
        self.llm.wake_up(tags=tags)
        self.asleep -= set(tags or ("weights", "kv_cache"))

    def generate(self, *args, **kwargs):
        assert not self.asleep, f"generate on a sleeping engine ({sorted(self.asleep)} asleep)"
        assert self.weights, "generate after level 2 discarded the weights, with no reload since"
        self.events.append("generate")
        return self.llm.generate(*args, **kwargs)

    def __getattr__(self, name):
        if name == "llm":
            raise AttributeError(name)
        return getattr(self.llm, name)


def main(argv: list[str]) -> None:
    import trl.generation.vllm_generation as generation

    from rewatch_trl.grpo import main as grpo
    from rewatch_trl.grpo import parse_args

    generation.LLM = SleepingLLM
    trainer = grpo(*parse_args(argv))
    rank = int(os.environ.get("RANK", "0"))
    events = trainer.vllm_generation.llm.llm.events
    Path(trainer.args.output_dir, f"sleep_events-{rank}.json").write_text(json.dumps(events))


if __name__ == "__main__":
    main(sys.argv[1:])
