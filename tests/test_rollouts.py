"""The rollouts a run logs (`rollouts.py`) and their page (`rollout_page.py`), read by a real headless browser
(Debian's chromium and its driver: `make test` installs them where missing)."""

import json
import shutil

import pytest
from PIL import Image

from rewatch_trl.cli import main as cli
from rewatch_trl.rollout_page import marked, shown
from rewatch_trl.rollouts import read_rollouts
from rewatch_trl.video import sample_video


def browser():
    """Headless chromium through its own driver (no download: Debian's `chromium` and `chromium-driver`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = shutil.which("chromedriver")
    assert driver and shutil.which("chromium"), "make test installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_a_completions_parts_are_marked_and_its_text_escaped():
    text = "<action>Re-watch [00:06-00:08]</action>\n<observation>a <b> square</observation><answer>A</answer>"
    assert marked(text) == (
        '<span class="action">&lt;action&gt;Re-watch [00:06-00:08]&lt;/action&gt;</span>\n'
        '<span class="observation">&lt;observation&gt;a &lt;b&gt; square&lt;/observation&gt;</span>'
        '<span class="answer">&lt;answer&gt;A&lt;/answer&gt;</span>'
    )


@pytest.fixture(scope="module")
def logged_run(tiny_world, tmp_path_factory, make_trainer):
    """2 GRPO steps with `log_completions` (4 prompts a step, G = 2): synthetic_000.mp4's groups earn flat rewards,
    multiple-choice answers are wrong."""
    from varied_reward import characters_but_on_the_first_video, right_on_open_questions

    out = tmp_path_factory.mktemp("logged")
    trainer, _ = make_trainer(
        tiny_world,
        out,
        per_device_train_batch_size=8,
        log_completions=True,
        accuracy_reward="right_on_open_questions",
        __init__={"reward_funcs": [characters_but_on_the_first_video, right_on_open_questions]},
    )
    trainer.train()
    trainer.save_state()
    return out


def test_training_writes_each_logged_steps_rollouts_as_trl_logged_them(logged_run, tiny_world):
    import pandas as pd

    steps = read_rollouts(logged_run)
    assert [step["step"] for step in steps] == [1, 2]
    for step in steps:
        table = pd.read_parquet(logged_run / "completions" / f"completions_{step['step']:05d}.parquet")
        rows = [rollout for group in step["groups"] for rollout in group["rollouts"]]
        assert len(step["groups"]) == 4 and len(rows) == len(table) == 8
        assert [r["text"] for r in rows] == [c[0]["content"] for c in table["completion"]]
        for name in ("characters_but_on_the_first_video", "right_on_open_questions"):
            assert [r["rewards"][name] for r in rows] == pytest.approx(table[name].tolist())
        assert [r["advantage"] for r in rows] == pytest.approx(table["advantage"].tolist())
        for group in step["groups"]:
            totals = [r["total"] for r in group["rollouts"]]
            assert group["zero_variance"] == (len(set(totals)) == 1)
            assert group["zero_variance"] == group["media"]["path"].endswith("synthetic_000.mp4")
            paid = [r["rewards"]["right_on_open_questions"] > 0.1 for r in group["rollouts"]]
            assert [r["right"] for r in group["rollouts"]] == paid
            # the frames the model saw: 8 a video (2 fps over 8 s, at most 8), at their times, as small JPEGs
            frames = group["media"]["frames"]
            video = sample_video(group["media"]["path"], tiny_world.video_settings)
            assert [f["time"] for f in frames] == pytest.approx([i / video.video_fps for i in video.frame_indices])
            assert len(frames) == 8
            with Image.open(logged_run / "rollouts" / frames[0]["thumb"]) as thumb:
                assert thumb.format == "JPEG" and max(thumb.size) <= 96


def test_the_page_shows_every_frame_completion_and_reward_and_its_filters_work(logged_run, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "page.html"
    assert cli(["rollouts", str(logged_run), "--out", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text  # nothing to fetch
    steps = read_rollouts(logged_run)
    groups = [group for step in steps for group in step["groups"]]
    rollouts = [rollout for group in groups for rollout in group["rollouts"]]
    driver = browser()
    try:
        driver.get(page.as_uri())
        drawn = driver.find_elements(By.CSS_SELECTOR, ".group")
        assert len(drawn) == len(groups) == 8
        for element, group in zip(drawn, groups, strict=True):
            strip = element.find_elements(By.CSS_SELECTOR, ".strip .frame")
            assert len(strip) == len(group["media"]["frames"]) == 8
            # each thumbnail is drawn: an inlined image of its own
            assert all(
                "data:image/jpeg;base64"
                in f.find_element(By.CSS_SELECTOR, ".thumb").value_of_css_property("background-image")
                for f in strip
            )
        cards = driver.find_elements(By.CSS_SELECTOR, ".rollout")
        assert len(cards) == len(rollouts)
        for card, rollout in zip(cards, rollouts, strict=True):
            cells = [td.text for td in card.find_elements(By.CSS_SELECTOR, "table.rewards td")]
            expected = [*rollout["rewards"].values(), rollout["total"], rollout["advantage"]]
            assert cells == [f"{v:.3f}" for v in expected]
            # as the browser shows it: its whitespace (the tiny model writes \r too) runs of one space
            assert card.find_element(By.CSS_SELECTOR, ".text").text.split() == shown(rollout["text"]).split()
        svg = driver.find_elements(By.CSS_SELECTOR, "svg.curves polyline")
        assert {line.get_attribute("data-key") for line in svg} >= {"reward"}

        def visible(selector):
            return [e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]

        flat = sum(group["zero_variance"] for group in groups)
        assert 0 < flat < len(groups)
        driver.find_element(By.ID, "only-flat").click()
        assert len(visible(".group")) == flat
        assert driver.find_element(By.ID, "shown").text == str(flat)
        driver.find_element(By.ID, "only-flat").click()
        wrong = sum(rollout["right"] is False for rollout in rollouts)
        assert 0 < wrong < len(rollouts)
        driver.find_element(By.ID, "only-wrong").click()
        assert len(visible(".rollout")) == wrong
        assert all("wrong" in card.get_attribute("class") for card in visible(".rollout"))
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()


def test_eval_predictions_make_the_same_page(tiny_world, tmp_path):
    """A prediction of `rewatch-trl eval` (its question, video and completion) as a group of one rollout: the frames of
    its video and the clip its action names marked on them."""
    from rewatch_trl.rollouts import media_block

    row = tiny_world.rows[0]
    video = str(tiny_world.video_dir / row["videos"])
    completion = "<action>Re-watch [00:06-00:08]</action><observation>blue</observation><answer>A</answer>"
    prediction = {
        "problem_id": row["problem_id"],
        "problem": row["problem"],
        "completion": completion,
        "answer": "A",
        "accuracy": 1.0,
        "format": 1.0,
        "rewatched": [],
        "media": {"type": "video", "video": video},
    }
    path = tmp_path / "report.predictions.jsonl"
    path.write_text(json.dumps(prediction) + "\n")
    settings = tiny_world.video_settings
    args = ["--fps", str(settings.video_fps), "--max-frames", str(settings.video_max_frames)]
    args += ["--min-pixels", str(settings.video_min_pixels), "--max-pixels", str(settings.video_max_pixels)]
    args += ["--total-pixels", str(settings.video_total_pixels)]
    assert cli(["rollouts", str(path), *args]) == 0
    (step,) = read_rollouts(path, settings)
    (group,) = step["groups"]
    assert len(group["media"]["frames"]) == 8 and group["rollouts"][0]["clips"] == [{"start": 6, "end": 8}]
    page = tmp_path / "report.predictions.html"
    assert page.read_text().count('class="frame"') == 8
    assert page.read_text().count('<i class="on">') == 2  # the frames at 6 s and 7 s (of 0 to 7)
    assert media_block([{"role": "user", "content": [{"type": "video", "video": video}]}]) == prediction["media"]
