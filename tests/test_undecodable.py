"""A video that fails to decode during a run costs its rows, not the run: GRPO (1 process with decode-ahead
workers, 2 processes with a prompt's copies split between them) and SFT reach their last step, the rows of the
broken video are out of the loss, and `undecodable.jsonl` names the file with its decoder's own error."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_video import corrupt_frames


BROKEN = "synthetic_001.mp4"


@pytest.fixture
def broken_world(tiny_world, tmp_path):
    """A copy of the tiny world (4 videos, 2 rows each) whose second video has a readable header and no frames."""
    from rewatch_trl.tiny import TinyWorld

    root = tmp_path / "world"
    shutil.copytree(tiny_world.root, root)
    world = TinyWorld(
        root=root,
        video_dir=root / tiny_world.video_dir.relative_to(tiny_world.root),
        qa_path=root / tiny_world.qa_path.relative_to(tiny_world.root),
        captions_path=root / tiny_world.captions_path.relative_to(tiny_world.root),
        rows=tiny_world.rows,
    )
    corrupt_frames(world.video_dir / BROKEN)
    return world


def records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "undecodable.jsonl").read_text().splitlines()]


def check_record(output_dir, world):
    (record,) = records(output_dir)  # one line for the file, however many rows and steps met it
    assert record["path"] == str((world.video_dir / BROKEN).absolute())
    assert record["backend"] == "decord"
    assert "decord" in record["error"].lower() or "cannot" in record["error"].lower(), record
    assert "read_video" not in record["error"], record  # the decoder's own message, not torchvision's fallback
    assert isinstance(record["step"], int)


def test_the_broken_video_really_does_not_decode(broken_world):
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS
    from rewatch_trl.video import VideoError, decode_video

    with pytest.raises(VideoError, match="cannot decode"):
        decode_video(broken_world.video_dir / BROKEN, TINY_VIDEO_SETTINGS)
    decode_video(broken_world.video_dir / "synthetic_000.mp4", TINY_VIDEO_SETTINGS)  # the control


def test_grpo_with_decode_ahead_leaves_the_broken_videos_rows_out(broken_world, tmp_path, make_trainer):
    """One epoch of the 8 rows (2 prompts a step, 4 steps), frames decoded in a DataLoader worker: the run ends, and
    exactly the 2 x G completions of the broken video's 2 rows are out of the loss (mask 0) and unscored (advantage 0);
    the others are in it."""
    out = tmp_path / "run"
    trainer, _ = make_trainer(
        broken_world, out, max_steps=4, dataloader_num_workers=1, num_generations=2, per_device_train_batch_size=4
    )
    outputs = []
    generate = trainer._generate_and_score_completions

    def spy(inputs):
        output = generate(inputs)
        broken = [row["videos"] == BROKEN for row in inputs]
        outputs.append((broken, output))
        return output

    trainer._generate_and_score_completions = spy
    trainer.train()
    assert trainer.state.global_step == 4
    broken_rows = 0
    for broken, output in outputs:
        mask = output["completion_mask"] * output.get("tool_mask", torch.ones_like(output["completion_mask"]))
        for row, is_broken in enumerate(broken):
            if is_broken:
                broken_rows += 1
                assert mask[row].sum() == 0 and output["advantages"][row] == 0
            else:
                assert mask[row].sum() > 0
    assert broken_rows == 2 * 2  # its 2 rows, 2 completions each: every one of them met
    assert any(output["advantages"].abs().sum() > 0 for _, output in outputs)  # the others still train
    logged = [entry["data/undecodable"] for entry in trainer.state.log_history if "data/undecodable" in entry]
    assert sum(logged) == broken_rows
    check_record(out, broken_world)


def test_a_two_process_run_past_a_broken_video_and_a_refusing_hub(broken_world, tmp_path, launcher, refusing_hub):
    """What a long run meets, at once: a prompt's 8 completions split 4 and 4 between two processes (1 prompt a
    step, 4 steps: each video's first row once), one video broken, and a Hub that makes the repo at the start and
    refuses the upload at the end (403). The run reaches max_steps with the broken video's rows left out and written
    down, saves its model in `output_dir`, and one line says the push failed, why, and where the model is."""
    rows = [json.loads(line) for line in broken_world.qa_path.read_text().splitlines()]
    firsts = list({row["videos"]: row for row in reversed(rows)}.values())
    broken_world.qa_path.write_text("".join(json.dumps(row) + "\n" for row in firsts))
    requests, url = refusing_hub
    out = tmp_path / "run"
    command = launcher.command(
        broken_world,
        out,
        2,
        max_steps=4,
        per_device_train_batch_size=4,
        num_generations=8,
        save_strategy="no",
        model_name_or_path=broken_world.root,
        push_to_hub="true",
        hub_model_id="me/x",
    )
    env = {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf")}
    result = launcher.run(command, timeout=600, env=env)
    state = launcher.state(out)
    assert state["global_step"] == 4
    logged = [entry["data/undecodable"] for entry in state["log_history"] if "data/undecodable" in entry]
    assert sum(logged) == 8  # the broken video's row, its 8 completions
    check_record(out, broken_world)
    assert ("POST", "/api/repos/create") in requests  # the control: the run really reached this Hub
    assert any(status != "POST" or path != "/api/repos/create" for status, path in requests)  # and pushed to it
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "could not push" in line]
    assert "the Hub model me/x" in line and "403" in line and f"the model is saved in {out}" in line
    assert (out / "model.safetensors").is_file()


def test_sft_masks_the_broken_videos_rows(broken_world):
    """The SFT batch keeps its shape: the broken row gets a blank stand-in and no labels, the others keep theirs."""
    from transformers import AutoProcessor

    from rewatch_trl.collator import IGNORE_INDEX, VideoCollator
    from rewatch_trl.sft import SFTVideoCollator
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS
    from rewatch_trl.video import VideoCache, VideoError

    processor = AutoProcessor.from_pretrained(broken_world.root)
    processor.tokenizer.padding_side = "right"
    rows = [row for row in broken_world.rows if row["videos"] in ("synthetic_000.mp4", BROKEN)]
    strict = VideoCollator(processor, TINY_VIDEO_SETTINGS, broken_world.video_dir, VideoCache())
    with pytest.raises(VideoError, match="cannot decode"):  # inference and evaluation still refuse it
        strict(rows, answers=[row["response"] for row in rows])
    collator = VideoCollator(
        processor, TINY_VIDEO_SETTINGS, broken_world.video_dir, VideoCache(), tolerate_undecodable=True
    )
    batch = SFTVideoCollator(collator)(rows)
    labelled = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()
    for row, count in zip(rows, labelled, strict=True):
        assert (count == 0) == (row["videos"] == BROKEN), (row["videos"], count)
    (failure,) = collator.undecodable.values()
    assert failure.path == str((broken_world.video_dir / BROKEN).absolute()) and "cannot decode" in failure.error


def test_a_clip_that_does_not_decode_leaves_its_video_out(tiny_world, monkeypatch):
    """Agentic mode: a clip cut from a file broken past its sampled frames fails to decode; the model reads a reply,
    and the file is recorded (its rows leave the loss, its later prompts get the blank stand-in)."""
    from test_rewatch import SCRIPT, TINY_REWATCH, run_rollout
    from transformers import AutoProcessor

    from rewatch_trl import rewatch
    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.rewatch import Rewatcher, RewatchSettings
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS
    from rewatch_trl.video import DecodeError, UndecodableVideo, VideoCache

    def broken_clip(path, start, end, *args, **kwargs):
        raise DecodeError(f"cannot decode video {path} with decord: a planted failure")

    monkeypatch.setattr(rewatch, "sample_clip", broken_clip)
    processor = AutoProcessor.from_pretrained(tiny_world.root)
    collator = VideoCollator(
        processor, TINY_VIDEO_SETTINGS, tiny_world.video_dir, VideoCache(), tolerate_undecodable=True
    )
    rewatcher = Rewatcher(collator, RewatchSettings(**TINY_REWATCH), [processor.tokenizer.eos_token_id])
    completion, _ = run_rollout(rewatcher, tiny_world, [SCRIPT, "<answer>A</answer>"], 200)
    assert completion.rewatched == []
    inserted = [t for t, m in zip(completion.ids, completion.model_mask, strict=True) if not m]
    assert "a planted failure" in processor.tokenizer.decode(inserted)
    path = collator.video_path(tiny_world.rows[0])
    assert list(collator.undecodable) == [path] and isinstance(collator.sample(path), UndecodableVideo)
