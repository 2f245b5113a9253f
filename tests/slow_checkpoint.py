"""`rewatch_trl.grpo` whose checkpoint `SLOW_CHECKPOINT_STEP` takes a minute to write: its model and optimizer are
written, then the writer waits (a marker `<output_dir>/writing-checkpoint-N` says it is there) before the RNG and
trainer states, so that a test can kill the run while the checkpoint is half written.

    accelerate launch tests/slow_checkpoint.py --config recipes/tiny/grpo.yaml ...
"""

import os
import sys
import time
from pathlib import Path


def main() -> None:
    from transformers import Trainer

    from rewatch_trl.grpo import main as grpo
    from rewatch_trl.grpo import parse_args

    step = os.environ["SLOW_CHECKPOINT_STEP"]
    save_rng_state = Trainer._save_rng_state

    def slow_save_rng_state(self, output_dir):
        if Path(output_dir).name == f"checkpoint-{step}":
            (Path(self.args.output_dir) / f"writing-checkpoint-{step}").touch()
            time.sleep(60)
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = slow_save_rng_state
    grpo(*parse_args(sys.argv[1:]))


if __name__ == "__main__":
    main()
