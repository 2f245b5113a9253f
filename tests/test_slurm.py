"""slurm/train.slurm builds one accelerate launch per node from Slurm's variables (srun/scontrol faked)."""

import os
import stat
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def script(arguments: list[str], env: dict) -> subprocess.CompletedProcess:
    """`bash slurm/<arguments>` in the repository, its output captured."""
    return subprocess.run(["bash", *arguments], cwd=ROOT, env=env, capture_output=True, text=True)


def test_slurm_script_launches_each_node_with_its_rank(tmp_path):
    fake(tmp_path, "scontrol", "echo node-a; echo node-b")
    # srun runs the per-node command twice, as two nodes would, with their own SLURM_PROCID
    fake(tmp_path, "srun", 'for r in 0 1; do SLURM_PROCID=$r "${@: -3}"; done')
    fake(tmp_path, "accelerate", 'echo "accelerate $*"')
    env = os.environ | {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
    }
    out = script(["slurm/train.slurm", "grpo", "recipes/grpo.yaml", "zero3"], env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        words = line.split()
        assert words[words.index("--machine_rank") + 1] == str(rank)
        assert words[words.index("--num_machines") + 1] == "2"
        assert words[words.index("--num_processes") + 1] == "16"
        assert words[words.index("--main_process_ip") + 1] == "node-a"
        assert words[words.index("--config_file") + 1] == "accelerate_configs/zero3.yaml"
        assert line.endswith("-m rewatch_trl.grpo --config recipes/grpo.yaml")


def test_slurm_script_rejects_bad_arguments(tmp_path):
    env = os.environ | {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "n"}
    for args, message in [
        (["train", "recipes/grpo.yaml"], "unknown stage"),
        (["grpo", "recipes/nope.yaml"], "recipe not found"),
        (["grpo", "recipes/grpo.yaml", "zero9"], "no accelerate_configs/zero9.yaml"),
    ]:
        out = script(["slurm/train.slurm", *args], env)
        assert out.returncode == 2 and message in out.stderr


def test_the_server_script_serves_on_the_first_node_and_trains_on_the_others(tmp_path):
    """slurm/train_with_server.slurm on 3 nodes: `trl vllm-serve` on the first, with the recipe's model across its 8
    GPUs; one accelerate launch on each of the 2 others, sampling from the first node's server."""
    fake(tmp_path, "scontrol", "echo node-a; echo node-b; echo node-c")
    # the server's srun says what it would run; the trainers' runs the per-node command as two nodes would
    body = 'if [[ "$*" == *vllm-serve* ]]; then echo "server $*"; else for r in 0 1; do SLURM_PROCID=$r "${@: -3}"; done; fi'
    fake(tmp_path, "srun", body)
    fake(tmp_path, "accelerate", 'echo "accelerate $*"')
    env = os.environ | {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "n"}
    out = script(["slurm/train_with_server.slurm", "recipes/grpo.yaml", "zero3"], env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    (served,) = [line.split() for line in lines if line.startswith("server")]
    assert served[served.index("--nodelist=node-a") + 1 :][:4] == [
        "trl",
        "vllm-serve",
        "--model",
        "runs/rewatch-sft",
    ]
    assert served[served.index("--tensor_parallel_size") + 1] == "8" and served[served.index("--port") + 1] == "8000"
    trainers = [line.split() for line in lines if line.startswith("accelerate")]
    assert len(trainers) == 2
    for rank, words in enumerate(trainers):
        assert words[words.index("--machine_rank") + 1] == str(rank)
        assert words[words.index("--num_processes") + 1] == "16"
        assert words[words.index("--main_process_ip") + 1] == "node-b"
        assert words[words.index("--vllm_mode") + 1] == "server"
        assert words[words.index("--vllm_server_host") + 1] == "node-a"
        assert words[words.index("--vllm_server_port") + 1] == "8000"
    one_node = script(["slurm/train_with_server.slurm", "recipes/grpo.yaml"], env | {"SLURM_NNODES": "1"})
    assert one_node.returncode == 2 and "needs 2 nodes or more" in one_node.stderr
