"""A training set mixed from several datasets (`rewatch_trl/mixture.py`, a recipe's `dataset_mixture`): each in its
format and with its media, drawn with the seed; the tiny mix recipe trains."""

import pytest

from rewatch_trl.data import DataError
from rewatch_trl.mixture import DatasetMixture, load_mixture


def mixture_of(world, seed=0, **changes):
    datasets = [
        {
            "id": str(world.qa_path),
            "captions": str(world.captions_path),
            "media_root": str(world.video_dir),
            "rows": 4,
        },
        {"id": str(world.video_r1_path), "format": "video-r1", "media_root": str(world.root), "data_types": ["video"]}
        | {"rows": 8},
        {"id": str(world.longvideo_reason_path), "format": "longvideo-reason", "media_root": str(world.root)},
    ]
    for index, change in changes.items():
        datasets[int(index.removeprefix("d"))] |= change
    return DatasetMixture.from_dict({"datasets": datasets, "seed": seed})


def sources(dataset) -> dict[str, int]:
    counts = {}
    for row in dataset:
        source = "video-r1" if row["data_source"] else "longvideo-reason" if row["reasoning"] else "rewatch"
        counts[source] = counts.get(source, 0) + 1
    return counts


def test_the_mixture_draws_its_rows_of_each_dataset_with_absolute_media(tiny_world):
    from pathlib import Path

    dataset = load_mixture(mixture_of(tiny_world))
    assert sources(dataset) == {"rewatch": 4, "video-r1": 8, "longvideo-reason": len(tiny_world.rows) // 2}
    assert set(dataset["data_type"]) == {"video"}  # Video-R1's image rows left out (`data_types`)
    for row in dataset:
        assert Path(row["videos"]).is_absolute() and Path(row["videos"]).is_file()
        assert (row["captions"] is not None) == (row["problem_type"] is None)  # the ReWatch rows' captions
    assert {row["problem_type"] for row in dataset} >= {None, "multiple choice", "numerical", "free-form"}
    # seeded: the same seed draws and orders the same rows, another does not
    again, other = load_mixture(mixture_of(tiny_world)), load_mixture(mixture_of(tiny_world, seed=1))
    assert again["problem_id"] == dataset["problem_id"] and other["problem_id"] != dataset["problem_id"]
    half = load_mixture(mixture_of(tiny_world, d0={"rows": None, "weight": 0.5}))
    assert sources(half)["rewatch"] == len(tiny_world.rows) // 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"datasets": [{"id": "a.jsonl", "row": 2}]}, r"dataset_mixture.datasets\[0\]: unknown key\(s\) row; known:"),
        ({"datasets": [], "seed": 0}, r"dataset_mixture: expected a mapping with a non-empty `datasets` list"),
        ({"datasets": [{"id": "a", "rows": 2, "weight": 0.5}]}, r"give `rows` or `weight`, not both"),
        ({"datasets": [{"id": "a", "weight": 2}]}, r"`weight` is a fraction of its rows, in \(0, 1\]; got 2"),
        ({"datasets": [{"rows": 2}]}, r"datasets\[0\]: expected a mapping with an `id`"),
        ({"datasets": [{"id": "a"}], "shuffle": True}, r"dataset_mixture: unknown key\(s\) shuffle"),
    ],
)
def test_a_bad_mixture_is_an_error_naming_the_entry_and_key(value, message):
    with pytest.raises(DataError, match=message):
        DatasetMixture.from_dict(value)


def test_a_dataset_asked_for_more_rows_than_it_has_or_an_absent_column_says_which(tiny_world):
    with pytest.raises(DataError, match=r"datasets\[1\] \(.*video_r1.json\): `rows: 999` asked of a dataset of 16"):
        load_mixture(mixture_of(tiny_world, d1={"rows": 999}))
    with pytest.raises(DataError, match=r"datasets\[0\] \(.*qa.jsonl\): no column\(s\) colour; it has problem_id"):
        load_mixture(mixture_of(tiny_world, d0={"columns": ["problem_id", "colour"]}))


def tiny_mix_arguments(recipe: str, world, model, tmp_path, launcher) -> list[str]:
    """The entry point's arguments of a tiny mix recipe as written (`recipes/tiny/{recipe}.yaml`), its
    `runs/tiny-world` read as `world`, from `model`, into `tmp_path / "run"`, saving nothing."""
    text = (launcher.root / f"recipes/tiny/{recipe}.yaml").read_text()
    assert text.count("runs/tiny-world") == 7  # its 3 files, 3 media roots and the captions
    config = tmp_path / f"{recipe}.yaml"
    config.write_text(text.replace("runs/tiny-world", str(world.root)))
    arguments = ["--config", str(config), "--model_name_or_path", str(model), "--output_dir", str(tmp_path / "run")]
    return arguments + ["--save_strategy", "no"]


def test_the_tiny_mix_recipe_trains_on_its_three_formats(tiny_world, sft_model, tmp_path, launcher):
    """`recipes/tiny/grpo_mix.yaml` as written (`make demo-mix`), through the GRPO entry point, its `runs/tiny-world`
    read as this test's world: GRPO from the demo's SFT on the seed's, Video-R1's (images and videos) and
    LongVideo-Reason's rows, every reward scored; 4 prompts a step (G = 2) over 3 steps, images and videos trained."""
    from safetensors.torch import load_file

    from rewatch_trl.grpo import main, parse_args

    arguments = tiny_mix_arguments("grpo_mix", tiny_world, sft_model, tmp_path, launcher)
    out = tmp_path / "run"
    arguments += ["--max_steps", "3", "--num_generations", "2"]
    trainer = main(*parse_args(arguments + ["--per_device_train_batch_size", "8"]))
    assert len(trainer.train_dataset) == 4 + 12 + len(tiny_world.rows) // 2
    steps = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(steps) == 3 and trainer.state.global_step == 3
    for entry in steps:
        for name in ("react_format_reward", "accuracy_reward", "temporal_grounding_reward", "observation_reward"):
            assert entry[f"rewards/{name}/mean"] == entry[f"rewards/{name}/mean"], name  # scored, not NaN
    images = [entry["data/image_rows"] for entry in steps]
    assert 0 < sum(images) < 3 * 8, images  # image rows and video rows were trained
    trained, start = (load_file(str(path / "model.safetensors")) for path in (out, sft_model))
    assert max((trained[name] - start[name]).abs().max().item() for name in start) > 1e-5  # it learnt
