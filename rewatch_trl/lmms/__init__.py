"""lmms-eval integration: the `rewatch` model class, which answers with exactly our prompt, frames and decoding
(`infer.Predictor`), and the paper's benchmarks as lmms-eval tasks that score the `<answer>` of a ReAct completion.

    rewatch-trl lmms-eval --model rewatch --model_args pretrained=runs/rewatch-grpo --tasks rewatch_minerva

lmms-eval finds the model class through its plugin entry point (group `lmms_eval.models`, `manifest` below) and the
tasks through `--include_path TASKS_DIR` (the `lmms-eval` command adds it). Importing this module imports neither
lmms-eval nor torch.
"""

from pathlib import Path


TASKS_DIR = Path(__file__).parent / "tasks"


def manifest():
    """lmms-eval's plugin entry point: the `rewatch` model (imported by lmms-eval when it is asked for)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="rewatch", simple_class_path="rewatch_trl.lmms.model.RewatchModel")
