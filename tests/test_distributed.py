"""Scale-out: 4 faked CPU devices give the 1-device losses; 2 processes (jax.distributed on localhost) train,
save and restore a checkpoint. Each configuration runs in its own Python process (JAX reads the device count
and the distributed settings once, at start-up)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TIMEOUT_S = 120

# Trains the toy task of test_train.py for 3 steps (validation at 2, checkpoint at 2), then resumes to 4 steps;
# prints the losses of both calls and the validations as one JSON line.
WORKER = """
import dataclasses, json, sys
sys.path.insert(0, {tests!r})
from sscjax import train
if {distributed!r}:
    train.initialize_distributed("127.0.0.1:{port}", 2, int(sys.argv[1]))
import jax
from test_train import ToyTask
from sscjax.configs import TrainConfig
config = TrainConfig(steps=2, batch_size=8, learning_rate=1e-2, valid_every=2, log_every=1)
first = train.train(ToyTask(), config, {run!r})
second = train.train(ToyTask(), dataclasses.replace(config, steps=3), {run!r}, resume=True)
print(json.dumps({{"devices": jax.device_count(), "process": jax.process_index(),
                   "losses": {{**first.losses, **second.losses}}, "resumed_from": min(second.losses),
                   "validations": first.validations + second.validations}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, name: str, *, devices: int = 1, processes: int = 1) -> list[dict]:
    """Start the worker in `processes` processes with `devices` CPU devices each; their JSON results."""
    script = WORKER.format(tests=str(TESTS), distributed=processes > 1, port=_free_port(), run=str(tmp_path / name))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(processes)
    ]
    results = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=TIMEOUT_S)
            assert worker.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("single"), "run")[0]


def test_four_devices_give_the_one_device_losses(single, tmp_path):
    (four,) = _run(tmp_path, "run", devices=4)
    assert (single["devices"], four["devices"]) == (1, 4)
    assert four["losses"].keys() == single["losses"].keys() == {"1", "2", "3"}
    for step, loss in single["losses"].items():
        assert four["losses"][step] == pytest.approx(loss, rel=1e-5)
    for a, b in zip(single["validations"], four["validations"], strict=True):
        assert b["mae"] == pytest.approx(a["mae"], rel=1e-3)


@pytest.mark.slow  # a proof across two processes (8 s); the one-process, four-device check stays in the default tier
def test_two_processes_train_save_and_restore(single, tmp_path):
    results = _run(tmp_path, "run", processes=2)
    assert sorted(r["process"] for r in results) == [0, 1]
    for r in results:
        assert r["devices"] == 2
        assert r["resumed_from"] == 3  # the step-2 checkpoint was restored, not retrained
        for step, loss in single["losses"].items():
            assert r["losses"][step] == pytest.approx(loss, rel=1e-5)
    assert (tmp_path / "run" / "checkpoints" / "latest" / "3").is_dir()
    # written by process 0 only: 3 losses, 2 validations
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 5
