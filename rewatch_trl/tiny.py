"""The offline world: a tiny random Qwen2.5-VL, its tokenizer and processor, synthetic videos and seed-format rows.

Nothing here downloads anything. `build_tiny_world(DIR)` writes a directory that loads with
`AutoModelForImageTextToText.from_pretrained(DIR)` and `AutoProcessor.from_pretrained(DIR)`, plus
`videos/*.mp4`, `qa.jsonl` (the seed's format) and `captions.jsonl`. Everything is deterministic for a seed.

Example:
```python
>>> world = build_tiny_world("runs/tiny-world", seed=0)  # doctest: +SKIP
>>> world.qa_path.name, len(world.rows)  # doctest: +SKIP
('qa.jsonl', 8)
```
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rewatch_trl.families import family_of
from rewatch_trl.prompts import VideoSettings, duration_string, seconds_to_timestamp
from rewatch_trl.rewatch import RewatchSettings


SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TAGS = ["<action>", "</action>", "<observation>", "</observation>", "<answer>", "</answer>"]

# Qwen2.5-VL's chat template, except that it tests `content['type']`: `datasets` fills absent keys with None,
# so a text block also carries `"video": None` and a `'video' in content` test would count it as a video.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_video_settings(family: str = "qwen2_5_vl") -> VideoSettings:
    """Small frames for the tiny world: two pixel units a side (56x56 px for Qwen2.5-VL, 64x64 for Qwen3-VL: 4
    visual tokens a frame after the 2x2 merge), at most 8 frames."""
    side = 2 * family_of({"model_type": family}).pixel_unit
    return VideoSettings(
        video_fps=2.0,
        video_max_frames=8,
        video_min_pixels=side * side,
        video_max_pixels=side * side,
        video_total_pixels=8 * side * side,
    )


TINY_VIDEO_SETTINGS = tiny_video_settings()

# How the tiny world re-watches in agentic mode: a clip at the videos' 4 fps, every frame of a 2 s window.
TINY_REWATCH_SETTINGS = RewatchSettings(
    rewatch_mode="agentic", rewatch_fps=4.0, rewatch_max_frames=8, rewatch_max_pixels=56 * 56, max_rewatches=2
)

# LongVideo-Reason's `problem_type`: the reasoning perspective of a question
LONGVIDEO_REASON_PERSPECTIVES = ("temporal", "spatial", "goal and purpose", "plot and narrative")
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
MOTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


@dataclass
class TinyWorld:
    """Paths of a built tiny world."""

    root: Path
    video_dir: Path
    qa_path: Path
    captions_path: Path
    rows: list[dict]
    family: str = "qwen2_5_vl"
    video_r1_path: Path | None = None  # Video-R1's format (a JSON list): image and video rows of every problem type
    longvideo_reason_path: Path | None = None  # LongVideo-Reason's format (JSONL); both relative to `root`

    @property
    def video_settings(self) -> VideoSettings:
        """How its videos are sampled (`tiny_video_settings`)."""
        return tiny_video_settings(self.family)

    def recipe_keys(self) -> dict:
        """The keys that point a tiny recipe (`recipes/tiny/*.yaml`) at this world: its model, rows, captions, videos
        and frame sizes (in its family's pixel unit)."""
        settings = self.video_settings
        return {
            "model_name_or_path": self.root,
            "dataset_name": self.qa_path,
            "captions": self.captions_path,
            "video_root": self.video_dir,
            "video_min_pixels": settings.video_min_pixels,
            "video_max_pixels": settings.video_max_pixels,
            "video_total_pixels": settings.video_total_pixels,
        }


def _corpus() -> list[str]:
    from rewatch_trl.prompts import REACT_PROMPT, SYSTEM_PROMPT

    words = list(COLORS) + list(MOTIONS) + ["square", "moves", "the", "a", "is", "what", "color", "which", "way"]
    lines = [REACT_PROMPT, SYSTEM_PROMPT, " ".join(TAGS), "0123456789 : - [ ] A B C D", " ".join(words)]
    lines += [
        f"<action>Re-watch [00:0{i}-00:0{i + 2}]</action><observation>a red square moves right</observation>"
        for i in range(8)
    ]
    return lines * 4


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in code, with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        padding_side="left",  # as the seed loads Qwen2.5-VL's processor
    )


def build_tiny_processor(tokenizer=None, family: str = "qwen2_5_vl"):
    """The family's stock processor, with its stock image and video processors, around the tiny tokenizer."""
    import transformers

    spec = family_of({"model_type": family})
    tokenizer = tokenizer or build_tiny_tokenizer()
    processors = {
        "image_processor": getattr(transformers, spec.image_processor_class)(**spec.processor_kwargs),
        "video_processor": getattr(transformers, spec.video_processor_class)(**spec.processor_kwargs),
    }
    return getattr(transformers, spec.processor_class)(tokenizer=tokenizer, chat_template=CHAT_TEMPLATE, **processors)


# The sizes of the published Qwen2.5-VL-7B-Instruct config: a random model of the real shape, built offline.
QWEN2_5_VL_7B_SIZES = {
    "text": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
    },
    "vision": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "window_size": 112,
    },
}


# The sizes of the published Qwen3-VL-8B-Instruct config (8,767,123,696 parameters; untied embeddings).
QWEN3_VL_8B_SIZES = {
    "text": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "out_hidden_size": 4096,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
}

# The published shapes a GPU benchmark builds with random weights (no download): name -> (family, sizes).
PUBLISHED_SHAPES = {
    "qwen2.5-vl-7b": ("qwen2_5_vl", QWEN2_5_VL_7B_SIZES),
    "qwen3-vl-8b": ("qwen3_vl", QWEN3_VL_8B_SIZES),
}


def tiny_config(tokenizer, sizes: dict | None = None, family: str = "qwen2_5_vl"):
    """A config of the `family` for `tokenizer`'s special tokens: its tiny sizes (`families.Family.tiny_text` /
    `tiny_vision`: hidden size 64, 2 layers and a 2-block vision tower), or the `sizes` given (one of
    `PUBLISHED_SHAPES`: a real shape, random weights, for GPU benchmarks)."""
    from transformers import AutoConfig

    spec = family_of({"model_type": family})
    sizes = sizes or {"text": spec.tiny_text, "vision": spec.tiny_vision}
    ids = tokenizer.convert_tokens_to_ids
    return AutoConfig.for_model(
        family,
        text_config={
            **sizes["text"],
            "vocab_size": sizes["text"].get("vocab_size") or len(tokenizer),
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config=dict(sizes["vision"]),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build_tiny_model(tokenizer=None, seed: int = 0, family: str = "qwen2_5_vl"):
    """A random tiny image-text-to-text model of the `family` (fp32, eval mode), the same weights for the same
    seed."""
    import torch
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    tokenizer = tokenizer or build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, family=family)
    model = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)](config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def write_synthetic_video(
    path,
    seconds: float = 8.0,
    fps: int = 4,
    size: tuple[int, int] = (64, 48),
    segment: float = 2.0,
    seed: int = 0,
    flash: tuple[int, str] | None = None,
) -> list[dict]:
    """Write an mp4 (H.264, PyAV) of a coloured square that changes colour and direction every `segment` seconds,
    and with `flash = (frame, color)`, that one frame filled with the colour. Returns the captions that describe
    the square: `[{"start", "end", "text"}]` in seconds."""
    import av
    import numpy as np

    if seconds <= 0 or fps <= 0:
        raise ValueError(f"a synthetic video needs positive seconds and fps, got seconds={seconds}, fps={fps}")
    rng = random.Random(seed)
    width, height = size
    side = max(4, min(width, height) // 4)
    n_frames = round(seconds * fps)
    n_segments = max(1, -(-n_frames // round(segment * fps)))
    plan = [(rng.choice(list(COLORS)), rng.choice(list(MOTIONS))) for _ in range(n_segments)]
    x, y = (width - side) / 2, (height - side) / 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(n_frames):
            color, motion = plan[min(i // round(segment * fps), n_segments - 1)]
            dx, dy = MOTIONS[motion]
            x = min(max(x + dx * 2, 0), width - side)
            y = min(max(y + dy * 2, 0), height - side)
            frame = np.full((height, width, 3), 16, dtype=np.uint8)
            frame[int(y) : int(y) + side, int(x) : int(x) + side] = COLORS[color]
            if flash is not None and i == flash[0]:
                frame[:] = COLORS[flash[1]]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return [
        {
            "start": round(k * segment),
            "end": round(min((k + 1) * segment, seconds)),
            "text": f"a {color} square moves {motion}",
        }
        for k, (color, motion) in enumerate(plan)
    ]


# The containers LongVideo-Reason ships besides MP4 (its evaluation split: 867 .mp4, 130 .webm, 3 .mkv), by the
# codec each holds there
CONTAINER_CODECS = {".webm": "libvpx-vp9", ".mkv": "libx264", ".mp4": "libx264"}


def transcode(source, target) -> None:
    """`source`'s frames, at its rate, written to `target` in the container its suffix names (`CONTAINER_CODECS`)."""
    import av

    codec = CONTAINER_CODECS[Path(target).suffix]
    with av.open(str(source)) as reader, av.open(str(target), mode="w") as writer:
        video = reader.streams.video[0]
        stream = writer.add_stream(codec, rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else {"crf": "10", "b": "0"}
        for frame in reader.decode(video):
            writer.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        writer.mux(stream.encode())


def captions_text(captions: list[dict]) -> str:
    """Captions as the paper writes them: `[MM:SS-MM:SS] text`, one a line."""
    return "\n".join(
        f"[{seconds_to_timestamp(c['start'])}-{seconds_to_timestamp(c['end'])}] {c['text']}" for c in captions
    )


def synthetic_rows(
    video: str,
    captions: list[dict],
    duration: int,
    rng: random.Random,
    question: str = "What color is the square from {}?",
) -> list[dict]:
    """A multiple-choice and an open-ended question in the seed's format about one synthetic video, each with the
    ReAct `response` an SFT cold start learns from: re-watch the asked clip, say what is there, answer."""
    caption = rng.choice(captions)
    window = (caption["start"], caption["end"])
    return question_rows(video, "color", question, window, caption["text"], caption["text"].split()[1], duration, rng)


# The varied world's videos (seconds, fps, width x height) and questions: under `TINY_VIDEO_SETTINGS` their grids
# differ (temporal and spatial), their `second_per_grid_ts` are fractional (8 frames of 11 s: 2.75 s a grid), and
# their prompts have different lengths.
VARIED_VIDEOS = [
    (8, 4, (64, 48)),
    (11, 3, (96, 48)),
    (7, 5, (64, 96)),
    (13, 2, (128, 64)),
]  # widths: multiples of 32 (decord)
VARIED_QUESTIONS = [
    "What color is the square from {}?",
    "Which color does the moving square show from {}?",
    "From {}, what is the color of the square?",
    "In the clip from {}, which color has the square that moves around the frame?",
]


def flash_rows(video: str, window: tuple[int, int], color: str, duration: int, rng: random.Random) -> list[dict]:
    """A multiple-choice and an open-ended question about the one-frame flash in `window` (seconds) of a video, with
    the ReAct trace that re-watches the window: a question the whole video's frames cannot answer (the flash falls
    between them) and the re-watched clip can."""
    return question_rows(
        video, "flash", "What color flashes from {}?", window, f"a {color} flash", color, duration, rng
    )


def question_rows(
    video: str,
    kind: str,
    question: str,
    window: tuple[int, int],
    observation: str,
    color: str,
    duration: int,
    rng: random.Random,
) -> list[dict]:
    """The multiple-choice and the open-ended row of a `question` (`{}`: the window, `00:02 to 00:04`) whose answer
    is a colour, with the trace that re-watches the window, observes `observation` and answers."""
    start, end = (seconds_to_timestamp(second) for second in window)
    question = question.format(f"{start} to {end}")
    letters, options = "ABCD", list(COLORS)
    rng.shuffle(options)
    letter = letters[options.index(color)]
    problem = question + "".join(f"\n{letter_}: {option}" for letter_, option in zip(letters, options, strict=True))
    common = {"question_type": kind, "data_type": "video", "videos": video, "answer_str": color}
    common |= {"duration": duration, "duration_str": duration_string(duration)}
    trace = (
        f"<action>Re-watch [{start}-{end}]</action>\n<observation>{observation}</observation>\n<answer>{{}}</answer>"
    )
    return [
        {
            "problem_id": f"{video}_{kind}_multiple_choice",
            "multiple_choice": True,
            "problem": problem,
            "answer": letter,
        }
        | common
        | {"response": trace.format(letter)},
        {"problem_id": f"{video}_{kind}_open_end", "multiple_choice": False, "problem": question, "answer": color}
        | common
        | {"response": trace.format(color)},
    ]


def _place_flash(path, seconds: float, fps: int, segment: float, rng: random.Random) -> tuple[int, tuple[int, int]]:
    """A frame for a flash that the whole-video sampling (`TINY_VIDEO_SETTINGS`) skips and a re-watch of its
    window (`TINY_REWATCH_SETTINGS`) shows, and that window in seconds."""
    from rewatch_trl.video import VideoCache, sample_clip, sample_video

    cache = VideoCache()
    sampled = set(sample_video(path, TINY_VIDEO_SETTINGS, cache).frame_indices)
    per_segment = round(segment * fps)
    clip_settings = TINY_REWATCH_SETTINGS.clip_settings(TINY_VIDEO_SETTINGS)
    for k in rng.sample(range(int(seconds // segment)), int(seconds // segment)):
        window = (round(k * segment), round((k + 1) * segment))
        shown = set(sample_clip(path, *window, clip_settings, cache).frame_indices)
        frames = [f for f in range(k * per_segment, (k + 1) * per_segment) if f not in sampled and f in shown]
        if frames:
            return rng.choice(frames), window
    raise ValueError(f"no frame of {path} is both skipped by the video's sampling and shown by a re-watch")


def build_tiny_world(
    out,
    num_videos: int = 4,
    seconds: float = 8.0,
    fps: int = 4,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
    flashes: bool = False,
    varied: bool = False,
    family: str = "qwen2_5_vl",
) -> TinyWorld:
    """Write the whole offline world under `out` (model, processor, videos, `qa.jsonl`, `captions.jsonl`). With
    `flashes`, each video also holds a one-frame flash between its sampled frames, asked about (`flash_rows`). With
    `varied`, the videos differ in length, frame rate and size and the questions in wording (`VARIED_VIDEOS`):
    grids differ between rows and `second_per_grid_ts` is fractional; otherwise every video has the same shape. The
    model and processor are of the `family` (`families.FAMILIES`); sample its videos with `world.video_settings`."""
    if varied and (flashes or num_videos > len(VARIED_VIDEOS)):
        raise ValueError(f"the varied world has {len(VARIED_VIDEOS)} videos and no flashes")
    root = Path(out)
    video_dir = root / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    from rewatch_trl.training import save_published

    model = build_tiny_model(tokenizer, seed=seed, family=family)
    model.save_pretrained(root)
    save_published(root, model)  # an MoE's experts as published: as vLLM, and transformers under ZeRO-3, load them
    build_tiny_processor(tokenizer, family).save_pretrained(root)
    rng = random.Random(seed)
    rows, caption_rows = [], []
    for i in range(num_videos):
        name = f"synthetic_{i:03d}.mp4"
        shape = VARIED_VIDEOS[i] if varied else (seconds, fps, size)
        video = dict(zip(("seconds", "fps", "size"), shape, strict=True)) | {"seed": seed * 1000 + i}
        captions = write_synthetic_video(video_dir / name, **video)
        question = VARIED_QUESTIONS[i] if varied else VARIED_QUESTIONS[0]
        rows += synthetic_rows(name, captions, round(video["seconds"]), rng, question)
        if flashes:
            frame, window = _place_flash(video_dir / name, seconds, fps, 2.0, rng)
            color = rng.choice(list(COLORS))
            write_synthetic_video(video_dir / name, **video, flash=(frame, color))
            captions = sorted(
                [*captions, {"start": window[0], "end": window[1], "text": f"a {color} flash"}],
                key=lambda c: c["start"],
            )
            rows += flash_rows(name, window, color, round(seconds), rng)
        caption_rows.append({"videos": name, "captions": captions_text(captions)})
    qa_path, captions_path = root / "qa.jsonl", root / "captions.jsonl"
    qa_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    captions_path.write_text("".join(json.dumps(row) + "\n" for row in caption_rows))
    video_r1_rows, longvideo_rows = other_format_rows(root, video_dir, caption_rows, rng)
    video_r1_path, longvideo_reason_path = root / "video_r1.json", root / "longvideo_reason.jsonl"
    video_r1_path.write_text(json.dumps(video_r1_rows, indent=2))
    longvideo_reason_path.write_text("".join(json.dumps(row) + "\n" for row in longvideo_rows))
    return TinyWorld(root, video_dir, qa_path, captions_path, rows, family, video_r1_path, longvideo_reason_path)


def write_synthetic_image(path, color: str, text: str, size: tuple[int, int] = (64, 64)) -> None:
    """A PNG of a square of `color` on grey, with `text` written above it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle([width // 4, height // 2, 3 * width // 4, height - 4], fill=COLORS[color])
    draw.text((4, 4), text, fill=(255, 255, 255))
    image.save(path)


def other_format_rows(root: Path, video_dir: Path, caption_rows: list[dict], rng: random.Random):
    """Rows about the world's videos (and images it writes under `root/images`) in Video-R1's format, one of each
    problem type over images and videos, each with a `process` (its COT file's), and in LongVideo-Reason's."""
    from rewatch_trl.react import parse_captions

    colors = list(COLORS)
    options = [f"{letter}. {color}" for letter, color in zip("ABCD", colors, strict=True)]
    (root / "images").mkdir(exist_ok=True)
    video_r1, longvideo = [], []
    for i, caption_row in enumerate(caption_rows):
        first = parse_captions(caption_row["captions"])[0]
        color, motion = first.text.split()[1], first.text.split()[-1]
        letter = "ABCD"[colors.index(color)]
        video = f"./{video_dir.relative_to(root).as_posix()}/{caption_row['videos']}"
        image_color, word = rng.choice(colors), rng.choice(["STOP", "EXIT", "OPEN"])
        image = f"./images/sign_{i:03d}.png"
        write_synthetic_image(root / image, image_color, word)
        cases = [
            ("video", video, "multiple choice", "What color is the square at the start?", options, letter),
            ("video", video, "free-form", "Where does the square go at the start?", [], f"it moves {motion}"),
            ("video", video, "numerical", "How many squares are there?", [], "1"),
            ("video", video, "regression", "How many seconds does the first colour last?", [], "2.0"),
            (
                "image",
                image,
                "multiple choice",
                "What color is the square?",
                options,
                "ABCD"[colors.index(image_color)],
            ),
            ("image", image, "OCR", "What word is written on the image?", [], word),
        ]
        for j, (data_type, path, kind, problem, choices, answer) in enumerate(cases):
            video_r1.append(
                {
                    "problem_id": 100 * i + j,
                    "problem": problem,
                    "data_type": data_type,
                    "problem_type": kind,
                    "options": choices,
                    "process": f"<think>I look at the {data_type}: {answer}.</think>",
                    "solution": f"<answer>{answer}</answer>",
                    "path": path,
                    "data_source": "tiny",
                }
            )
        # As LongVideo-Reason ships its rows: no id, the options inside the problem, `problem_type` the reasoning
        # perspective; multiple-choice and open-ended rows alternate; some videos are WebM and Matroska
        container = {1: ".webm", 3: ".mkv"}.get(i % 4)
        if container:
            mp4 = root / video
            transcode(mp4, mp4.with_suffix(container))
            video = str(Path(video).with_suffix(container))
        if i % 2 == 0:
            problem, answer = "What color is the square at the start?\n" + "\n".join(options), letter
        else:
            problem, answer = "Where does the square go at the start?", f"it moves {motion}"
        longvideo.append(
            {
                "videos": video.removeprefix("./"),
                "problem": problem,
                "answer": f"<answer>{answer}</answer>",
                "reasoning": f"At the start the square is {color} and moves {motion}.",
                "problem_type": LONGVIDEO_REASON_PERSPECTIVES[i % len(LONGVIDEO_REASON_PERSPECTIVES)],
            }
        )
    return video_r1, longvideo
