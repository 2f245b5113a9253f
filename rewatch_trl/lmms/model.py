"""The `rewatch` model class of lmms-eval: each request answered as `rewatch-trl infer`/`eval` answer it."""

import dataclasses
import os
import tempfile
from pathlib import Path

from lmms_eval.api.model import lmms
from tqdm import tqdm

from rewatch_trl.infer import IMAGE_SUFFIXES, Predictor
from rewatch_trl.prompts import VideoSettings
from rewatch_trl.video import video_duration


# What lmms-eval passes besides the model arguments of `--model_args`
LMMS_EVAL_KWARGS = ("batch_size", "max_batch_size", "device")


class RewatchModel(lmms):
    """A trained checkpoint answering lmms-eval's requests with the seed's ReAct prompt (the question and the
    video's duration; an image task's question said of its image), the seed's frames (`VideoSettings`, here as model
    arguments) and greedy decoding; the completion is the whole ReAct trace, whose `<answer>` the tasks of
    `rewatch_trl/lmms/tasks` score.

    Model arguments: `pretrained` (a directory or Hub id), `backend` (transformers or vllm), `dtype`,
    `max_new_tokens`, and any `VideoSettings` field (`video_fps`, `video_max_frames`, `video_min_pixels`, ...).
    The batch size is lmms-eval's `--batch_size`.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        backend: str = "transformers",
        dtype: str = "auto",
        max_new_tokens: int = 4096,
        batch_size: int | str = 1,
        **kwargs,
    ):
        super().__init__()
        names = {field.name for field in dataclasses.fields(VideoSettings)}
        unknown = sorted(set(kwargs) - names - set(LMMS_EVAL_KWARGS))
        if unknown:
            raise ValueError(f"unknown model arguments for rewatch: {', '.join(unknown)} (known: {sorted(names)})")
        settings = VideoSettings(**{key: value for key, value in kwargs.items() if key in names})
        if backend == "transformers":
            import torch

            # one model a rank: under `accelerate launch`, each process on its own GPU
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        self.predictor = Predictor(
            pretrained, settings, max_new_tokens=int(max_new_tokens), backend=backend, dtype=dtype
        )
        self.batch_size_per_gpu = int(batch_size)
        self._images: tempfile.TemporaryDirectory | None = None

    def generate_until(self, requests) -> list[str]:
        rows = []
        for request in requests:
            question, _, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if len(visuals) != 1:
                raise ValueError(
                    f"{task} row {doc_id}: the rewatch model takes one video or image a question, got {len(visuals)}"
                )
            rows.append(self._row(question, visuals[0], f"{task}-{split}-{doc_id}"))
        completions = []
        for start in tqdm(range(0, len(rows), self.batch_size_per_gpu), desc="rewatch", disable=self.rank != 0):
            completions += self.predictor.generate(rows[start : start + self.batch_size_per_gpu])
        return completions

    def _row(self, question: str, visual, name: str) -> dict:
        """The row of a question about `visual`: a video file, an image file, or an image (PIL, as image tasks give
        it: written once to this model's folder of images)."""
        from PIL import Image

        if isinstance(visual, Image.Image):
            if self._images is None:
                self._images = tempfile.TemporaryDirectory(prefix="rewatch-lmms-images-")
            path = Path(self._images.name) / f"{name}.png"
            visual.convert("RGB").save(path)
            visual = path
        if Path(str(visual)).suffix.lower() in IMAGE_SUFFIXES:
            return {"problem": question, "image_path": str(visual), "data_type": "image"}
        return {"problem": question, "videos": str(visual), "duration": round(video_duration(visual))}

    def loglikelihood(self, requests):
        raise NotImplementedError("the rewatch model answers generation tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the rewatch model answers single-round questions")
