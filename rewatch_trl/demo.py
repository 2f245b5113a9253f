"""The CPU demo on the tiny world: until the GRPO trainer lands, it builds the world and answers one question."""

import json

from rewatch_trl.react import parse_react


def run_demo(out: str, seed: int = 0) -> str:
    """Build the tiny world under `out`, then let its (random) model answer the first question with the video."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, build_tiny_world

    world = build_tiny_world(out, seed=seed)
    model = AutoModelForImageTextToText.from_pretrained(world.root).eval()
    processor = AutoProcessor.from_pretrained(world.root)
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=world.video_dir)
    row = world.rows[0]
    batch = collator([row])
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=32, do_sample=False)
    answer = processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    trace = parse_react(answer)
    print(f"question: {row['problem']!r}")
    print(f"video: {row['videos']} ({batch['video_grid_thw'][0].tolist()} patches t,h,w)")
    print(f"completion of the untrained tiny model: {answer!r}")
    print(json.dumps({"well_formed": trace.well_formed, "answer": trace.answer, "steps": len(trace.steps)}))
    return answer
