"""vLLM's sleep mode where its CPU build refuses it (`enable_sleep_mode=True` is a configuration error there).

`SleepingLLM` is built as TRL builds its colocated `LLM(...)`. `sleep` is vLLM's own call (on the CPU build it
pauses the engine and resets its prefix, multimodal and encoder caches; the worker keeps its memory), and what a
GPU's level 2 does to the weights is modelled: they are gone until `wake_up(tags=["weights"])` and a reload, and
`generate` refuses to run on a sleeping engine or discarded weights. `events` records "sync", "generate" and
"sleep" in order.

With `REWATCH_SCRIPT` (a text) and `REWATCH_SCRIPT_RANK` in the environment, the process of that rank answers every
first-round request (one video: the prompt's) with the script instead of what the engine sampled, its tokens
unscored (NaN log-probs: TRL's correction leaves them at ratio 1): an agentic run whose processes then need
different numbers of rounds, and whose clips are on one process only.

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
        self.script = None
        if os.environ.get("REWATCH_SCRIPT") and os.environ.get("REWATCH_SCRIPT_RANK") == os.environ.get("RANK", "0"):
            tokenizer = self.llm.get_tokenizer()
            self.script = tokenizer(os.environ["REWATCH_SCRIPT"], add_special_tokens=False)["input_ids"]
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
        outputs = self.llm.generate(*args, **kwargs)
        requests = args[0] if args else kwargs["prompts"]
        if self.script is not None:
            from vllm.logprobs import Logprob

            for request, output in zip(requests, outputs, strict=True):
                if isinstance(request.get("multi_modal_data", {}).get("video"), tuple):  # a first round
                    for completion in output.outputs:
                        completion.token_ids = list(self.script)
                        completion.logprobs = [{t: Logprob(float("nan"), rank=1)} for t in self.script]
                        completion.finish_reason = "stop"
        return outputs

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
