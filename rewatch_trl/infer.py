"""Inference as in the seed: the video's duration in the prompt, the seed's frames, greedy decoding.

    rewatch-trl infer --model runs/rewatch-grpo videos/example.mp4 "What happened from [05:00] to [05:10]?" --json

Example:
```python
>>> predictor = Predictor("runs/tiny-grpo", VideoSettings())  # doctest: +SKIP
>>> predictor.generate([{"problem": "What happened?", "videos": "clip.mp4", "duration": 600}])  # doctest: +SKIP
['<action>...</action><observation>...</observation><answer>...</answer>']
```
"""

import json
import logging
import time
from pathlib import Path

from rewatch_trl.collator import VideoCollator, split_video_inputs, video_forward_kwargs
from rewatch_trl.image import load_image
from rewatch_trl.prompts import VideoSettings, duration_string
from rewatch_trl.react import parse_react
from rewatch_trl.rewatch import Rewatcher, RewatchSettings
from rewatch_trl.suppression import suppressed_token_ids
from rewatch_trl.video import VideoCache, sample_video, video_duration


logger = logging.getLogger(__name__)


class Predictor:
    """A trained model (a directory or a Hub id) that answers seed-format rows, in batches.

    `backend="transformers"` generates with `model.generate`; `backend="vllm"` with a vLLM `LLM` fed the same
    frames and prompt ids (`vllm_video.VideoLLM`), built with `vllm_kwargs` (e.g. `max_model_len`). With agentic
    `rewatch` settings, each action's clip is shown to the model before it goes on (`rewatch.Rewatcher`).
    """

    def __init__(
        self,
        model: str,
        settings: VideoSettings | None = None,
        video_root=None,
        max_new_tokens: int = 4096,
        backend: str = "transformers",
        dtype: str = "auto",
        vllm_kwargs: dict | None = None,
        rewatch: RewatchSettings | None = None,
    ):
        from transformers import AutoProcessor

        if Path(model).exists() and not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"model not found: {model} has no config.json")
        self.settings = settings or VideoSettings()
        try:
            self.processor = AutoProcessor.from_pretrained(model, padding_side="left")
        except OSError as error:  # neither a local directory nor a reachable Hub id
            raise FileNotFoundError(f"model not found: {model} ({str(error).splitlines()[0]})") from error
        self.collator = VideoCollator(self.processor, self.settings, video_root, VideoCache())
        self.max_new_tokens = max_new_tokens
        self.backend = backend
        if backend == "transformers":
            import torch
            from trl import ModelConfig

            from rewatch_trl.training import load_model

            # the loader of training: the same model class and position rule
            self.model = load_model(ModelConfig(model_name_or_path=model, dtype=dtype)).eval()
            if torch.cuda.is_available():
                self.model = self.model.cuda()
            self.config = self.model.config
        elif backend == "vllm":
            try:
                from vllm import LLM
            except ImportError as error:
                raise ImportError("backend='vllm' needs vLLM: pip install 'rewatch-trl[vllm]'") from error
            from transformers import AutoConfig

            from rewatch_trl.families import family_of
            from rewatch_trl.vllm_video import VideoLLM

            self.config = AutoConfig.from_pretrained(model)
            videos = 1 + (rewatch.max_rewatches if rewatch is not None and rewatch.agentic else 0)
            engine_kwargs = family_of(self.config).vllm_kwargs(dtype) | (vllm_kwargs or {})
            if dtype not in ("auto", engine_kwargs["dtype"]):
                logger.warning(
                    "vLLM runs %s models in %s, not %s", self.config.model_type, engine_kwargs["dtype"], dtype
                )
            llm = LLM(model=model, limit_mm_per_prompt={"video": videos, "image": 0}, **engine_kwargs)
            self.model = VideoLLM(llm, self.config)
        else:
            raise ValueError(f"unknown backend {backend!r}: transformers or vllm")
        self.rewatcher = None
        if rewatch is not None and rewatch.agentic:
            tokenizer = self.processor.tokenizer
            eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
            eos = [eos] if isinstance(eos, int) else list(eos or [])
            self.rewatcher = Rewatcher(self.collator, rewatch, [tokenizer.eos_token_id, *eos])

    def generate(self, rows: list[dict]) -> list[str]:
        """Greedy completions of rows (`problem`, `videos`, `duration`), in order."""
        return [text for text, _ in self.rollouts(rows)]

    def rollouts(self, rows: list[dict]) -> list[tuple[str, list[dict]]]:
        """Greedy completions of rows, in order, each with the clips it re-watched for real (agentic mode:
        `{"start", "end", "frames"}`; none otherwise)."""
        if self.rewatcher is None:
            return [(text, []) for text in self._generate(rows)]
        batch = self.collator(rows)
        keep = batch["attention_mask"].bool()
        prompt_ids = [ids[m].tolist() for ids, m in zip(batch["input_ids"], keep, strict=True)]
        device = None if self.backend == "vllm" else self.model.device
        samples = [{key: value.to(device) for key, value in sample.items()} for sample in split_video_inputs(batch)]
        completions = self.rewatcher.rollout(
            prompt_ids, self.collator.videos(rows), samples, self._round, self.max_new_tokens, device
        )
        texts = self.processor.batch_decode([c.model_ids() for c in completions], skip_special_tokens=True)
        return [(text, completion.rewatched) for text, completion in zip(texts, completions, strict=True)]

    def _round(self, sequences, videos, samples, stop, max_tokens):
        """One greedy generation round of an agentic rollout (`rewatch.Generate`)."""
        if self.backend == "vllm":
            from vllm import SamplingParams

            with self.model.limits(stop, max_tokens):
                outputs = self.model.generate(
                    [{"prompt_token_ids": ids} for ids in sequences], SamplingParams(temperature=0.0), videos=videos
                )
            return [(list(output.outputs[0].token_ids), None) for output in outputs]
        import torch

        width = max(len(ids) for ids in sequences)
        pad = self.processor.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in sequences], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in sequences], device=ids.device)
        video = video_forward_kwargs([row[0] for row in samples], ids, self.config, clips=[row[1:] for row in samples])
        limits = {"stop_strings": stop, "tokenizer": self.processor.tokenizer} if stop else {}
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                **video,
                do_sample=False,
                max_new_tokens=max_tokens,
                suppress_tokens=suppressed_token_ids(self.config),
                **limits,
            )
        return [(row[width:].tolist(), None) for row in output]

    def _generate(self, rows: list[dict]) -> list[str]:
        batch = self.collator(rows)
        if self.backend == "vllm":
            from vllm import SamplingParams

            keep = batch["attention_mask"].bool()
            requests = [{"prompt_token_ids": ids[m].tolist()} for ids, m in zip(batch["input_ids"], keep, strict=True)]
            params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
            outputs = self.model.generate(requests, params, videos=self.collator.videos(rows))
            return [output.outputs[0].text for output in outputs]
        import torch

        batch = batch.to(self.model.device)
        with torch.no_grad():
            output = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                suppress_tokens=suppressed_token_ids(self.config),
            )
        return self.processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def infer(
    model: str,
    video: str,
    question: str,
    settings: VideoSettings | None = None,
    max_new_tokens: int = 4096,
    backend="transformers",
    dtype: str = "auto",
    vllm_kwargs: dict | None = None,
    rewatch: RewatchSettings | None = None,
) -> dict:
    """Answer one question about one video file (or image file, by its suffix: `IMAGE_SUFFIXES`): the prompt, its
    tokens and visual tokens, the frames used (an image's size), the parsed trace, the clips re-watched for real
    (agentic `rewatch`) and timings."""
    start = time.perf_counter()
    image = Path(video).suffix.lower() in IMAGE_SUFFIXES
    duration = None if image else round(video_duration(video))
    predictor = Predictor(
        model,
        settings,
        max_new_tokens=max_new_tokens,
        backend=backend,
        dtype=dtype,
        vllm_kwargs=vllm_kwargs,
        rewatch=rewatch,
    )
    loaded = time.perf_counter()
    path = str(Path(video).absolute())
    if image:
        row = {"problem": question, "image_path": path, "data_type": "image"}
        seen = {"image": str(video), "size": list(load_image(path, predictor.settings).size)}
    else:
        row = {"problem": question, "videos": path, "duration": duration}
        frames = sample_video(row["videos"], predictor.settings, predictor.collator.cache)
        seen = {
            "video": str(video),
            "duration": duration,
            "duration_str": duration_string(duration),
            "frames": {
                "count": len(frames.frame_indices),
                "fps": frames.fps,
                "indices": frames.frame_indices,
                "size": list(frames.frames.shape[-2:]),
            },
        }
    ids = predictor.collator([row])["input_ids"][0]
    config = predictor.config
    visual_tokens = int(((ids == config.image_token_id) | (ids == config.video_token_id)).sum())
    decoded = time.perf_counter()
    ((completion, rewatched),) = predictor.rollouts([row])
    done = time.perf_counter()
    trace = parse_react(completion)
    return {
        "prompt": predictor.collator.prompt_text(predictor.collator.messages(row)),
        "prompt_tokens": len(ids),
        "visual_tokens": visual_tokens,
        **seen,
        "completion": completion,
        "actions": [step.action for step in trace.steps],
        "clips": [[list(clip) for clip in clips] for clips in trace.clips],
        "rewatched": rewatched,
        "observations": [step.observation for step in trace.steps],
        "answer": trace.answer,
        "well_formed": trace.well_formed,
        "timings": {"load_s": loaded - start, "decode_s": decoded - loaded, "generate_s": done - decoded},
    }


def format_result(result: dict) -> str:
    """The human-readable form `rewatch-trl infer` prints."""
    if "image" in result:
        lines = [f"image: {result['image']} ({result['size'][0]}x{result['size'][1]} px)", ""]
    else:
        lines = [f"video: {result['video']} ({result['duration_str']}, {result['frames']['count']} frames)", ""]
    lines.append(result["completion"])
    lines += ["", f"answer: {result['answer']}", f"re-watch steps: {len(result['actions'])}"]
    if result["rewatched"]:
        shown = ", ".join(f"{c['start']:g}-{c['end']:g} s ({c['frames']} frames)" for c in result["rewatched"])
        lines.append(f"clips re-watched: {shown}")
    return "\n".join(lines)


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False)
