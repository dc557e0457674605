"""The compute core: job-spec validation, the step/file schedule, file gradients against plain torch autograd,
and bit-identical gradients across threads and processes."""
from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shield_model.compute import BatchSchedule, ComputeSpec, FileGradient, GradientComputer, initial_parameters
from shield_model.errors import ComputeError
from shield_model.zoo.models import build_seeded_model
from tests.runtime_helpers import MNIST_DIR as MNIST_PATH
from wire.digest import digest_bytes as _digest_bytes

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = str(MNIST_PATH)


def digest_bytes(vector: np.ndarray) -> bytes:
    return _digest_bytes(vector.view(np.uint8))


def lenet_spec(**overrides) -> ComputeSpec:
    fields = dict(network="LeNet", dataset="MNIST", data_dir=MNIST_DIR, seed=3, batch_size=40, num_files=4)
    fields.update(overrides)
    return ComputeSpec(**fields)


@pytest.fixture(scope="module")
def lenet() -> GradientComputer:
    return GradientComputer(lenet_spec())


@pytest.mark.parametrize("fields", [dict(batch_size=30, num_files=4), dict(seed=-1), dict(num_files=0),
                                    dict(threads=0), dict(batch_size=0)])
def test_spec_rejects_what_it_cannot_honour(fields):
    with pytest.raises(ComputeError):
        lenet_spec(**fields)


def test_batch_larger_than_the_training_set_is_refused():
    with pytest.raises(ComputeError, match="exceeds"):
        BatchSchedule(seed=0, num_samples=10, batch_size=20, num_files=2)


def test_schedule_is_a_pure_function_of_seed_and_step():
    a, b = BatchSchedule(5, 100, 20, 4), BatchSchedule(5, 100, 20, 4)
    assert a.steps_per_epoch == 5
    for step in (7, 0, 12, 3):  # out of order on purpose: the cache must not matter
        assert torch.equal(a.batch(step), b.batch(step))
    assert not torch.equal(a.batch(0), BatchSchedule(6, 100, 20, 4).batch(0))


def test_files_partition_the_batch_and_an_epoch_covers_the_data_once():
    schedule = BatchSchedule(seed=1, num_samples=103, batch_size=20, num_files=4)
    assert schedule.steps_per_epoch == 5
    for step in range(10):
        files = [schedule.file(step, i) for i in range(4)]
        assert all(len(f) == 5 for f in files)
        assert torch.equal(torch.cat(files), schedule.batch(step))
    epoch0 = torch.cat([schedule.batch(s) for s in range(5)])
    epoch1 = torch.cat([schedule.batch(s) for s in range(5, 10)])
    assert len(set(epoch0.tolist())) == 100 and len(set(epoch1.tolist())) == 100
    assert not torch.equal(epoch0, epoch1)
    with pytest.raises(ComputeError):
        schedule.file(0, 4)
    with pytest.raises(ComputeError):
        schedule.batch(-1)


def test_initial_parameters_follow_the_seed(lenet):
    assert lenet.num_params == 431_080
    assert lenet.steps_per_epoch == 8000 // 40
    params = lenet.initial_parameters()
    assert params.dtype == np.float32 and params.shape == (431_080,)
    reference = torch.nn.utils.parameters_to_vector(build_seeded_model("LeNet", "MNIST", 3).parameters())
    assert np.array_equal(params, reference.detach().numpy())
    assert np.array_equal(params, initial_parameters("LeNet", "mnist", 3))
    other = GradientComputer(lenet_spec(seed=4)).initial_parameters()
    assert not np.array_equal(params, other)


def test_file_gradient_equals_plain_autograd_on_the_same_samples(lenet):
    rng = np.random.default_rng(0)
    params = lenet.initial_parameters() + rng.normal(0, 0.01, lenet.num_params).astype(np.float32)
    out = np.full(lenet.num_params, np.nan, dtype=np.float32)
    result = lenet.file_gradient(params, step=5, file=2, out=out)
    assert isinstance(result, FileGradient) and result.gradient is out
    assert result.samples == 10 and result.seconds > 0

    model = build_seeded_model("LeNet", "MNIST", 0)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(params.copy()), model.parameters())
    images, labels = lenet.file_inputs(5, 2)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert result.loss == pytest.approx(loss.item(), rel=1e-6)
    assert np.abs(out).sum() > 0


def test_mean_of_file_gradients_is_the_batch_gradient(lenet):
    params = lenet.initial_parameters()
    files = [lenet.file_gradient(params, 9, i).gradient for i in range(4)]
    model = build_seeded_model("LeNet", "MNIST", 3)
    indices = lenet.schedule.batch(9)
    images = lenet.data.transform(lenet.data.train_images[indices])
    torch.nn.functional.cross_entropy(model(images), lenet.data.train_labels[indices]).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_allclose(np.mean(files, axis=0), expected, rtol=1e-4, atol=1e-6)


def test_parameters_view_and_worker_threads_give_identical_bits(lenet):
    params = lenet.initial_parameters() * np.float32(0.9)
    params.setflags(write=False)  # e.g. np.frombuffer over received bytes
    reference = digest_bytes(lenet.file_gradient(params, 11, 1).gradient)
    view = lenet.parameters_view()
    view[:] = params
    assert digest_bytes(lenet.file_gradient(view, 11, 1).gradient) == reference
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(lenet.file_gradient, params, 11, 1).result()
    assert digest_bytes(result.gradient) == reference
    assert digest_bytes(lenet.file_gradient(params, 11, 2).gradient) != reference


@pytest.mark.parametrize("bad", [np.zeros(10, np.float32), np.zeros(431_080, np.float64), [0.0] * 431_080])
def test_malformed_parameter_vectors_are_refused(lenet, bad):
    with pytest.raises(ComputeError, match="float32 of shape"):
        lenet.file_gradient(bad, 0, 0)


def test_file_out_of_range_is_refused(lenet):
    with pytest.raises(ComputeError, match="out of range"):
        lenet.file_gradient(lenet.initial_parameters(), 0, 4)


def write_fake_cifar10(folder: Path, records_per_file: int = 8) -> Path:
    """A tiny dataset in the real CIFAR-10 binary layout (random pixels, labels 0-9)."""
    rng = np.random.default_rng(42)
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = rng.integers(0, 256, size=(records_per_file, 1 + 3 * 32 * 32), dtype=np.uint8)
        rows[:, 0] %= 10
        rows.tofile(batches / name)
    return folder


_CHILD = """
import json, sys
import numpy as np
from shield_model.compute import ComputeSpec, GradientComputer
from wire.digest import digest_bytes
job = json.loads(sys.argv[1])
computer = GradientComputer(ComputeSpec(**job["spec"]))
params = computer.initial_parameters() * np.float32(0.5)
result = computer.file_gradient(params, job["step"], job["file"])
print(json.dumps({"digest": digest_bytes(result.gradient.view(np.uint8)).hex(), "loss": result.loss}))
"""


def _digests_in_children(job: dict, count: int) -> list[dict]:
    """Run ``count`` fresh processes at once, each computing ``job``; their JSON answers."""
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(job)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(count)]
    answers = []
    try:
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err
            answers.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return answers


@pytest.mark.parametrize("network", ["LeNet", "ResNet18"])
def test_gradients_are_bit_identical_across_processes(network, tmp_path):
    """Two fresh processes and this one compute the same file: the BLAKE3 digests must be equal. ResNet18 runs on a
    tiny CIFAR-10-format dataset so that the crop/flip augmentation path is exercised too."""
    if network == "LeNet":
        spec = dict(network="LeNet", dataset="MNIST", data_dir=MNIST_DIR, seed=11, batch_size=40, num_files=4)
        step = 250  # second epoch
    else:
        data_dir = str(write_fake_cifar10(tmp_path))
        spec = dict(network="ResNet18", dataset="Cifar10", data_dir=data_dir, seed=11, batch_size=4, num_files=2)
        step = 13  # 40 training images, 10 steps per epoch: second epoch
    job = {"spec": spec, "step": step, "file": 1}
    first, second = _digests_in_children(job, 2)
    computer = GradientComputer(ComputeSpec(**spec))
    here = computer.file_gradient(computer.initial_parameters() * np.float32(0.5), step, 1)
    assert first == second
    assert first["digest"] == digest_bytes(here.gradient).hex()
    assert first["loss"] == here.loss and np.abs(here.gradient).sum() > 0
    other_file = computer.file_gradient(computer.initial_parameters() * np.float32(0.5), step, 0)
    assert digest_bytes(other_file.gradient).hex() != first["digest"]


def test_flat_parameters_keep_model_order_and_zero_fill_missing_grads():
    from shield_model.zoo.flat import FlatParameters

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    unused = torch.nn.Linear(4, 1)
    model.add_module("unused", unused)
    flat = FlatParameters(model)
    assert flat.num_params == 8 + 3 + 5
    vector = np.arange(flat.num_params, dtype=np.float32)
    flat.load(vector)
    assert model[0].weight[1, 2].item() == 5 and model[1].bias.item() == 10 and unused.bias.item() == 15
    assert np.array_equal(flat.values(), vector)
    model[1](model[0](torch.ones(1, 3))).sum().backward()
    out = np.full(flat.num_params, np.nan, dtype=np.float32)
    flat.gradient(out)
    hidden = model[0](torch.ones(1, 3))[0].detach().numpy()
    assert np.array_equal(out[:6], [8, 8, 8, 9, 9, 9])  # d/dW1 = W2 x^T with W2 = [8, 9], x = 1
    assert np.array_equal(out[6:8], [8, 9]) and np.array_equal(out[8:10], hidden) and out[10] == 1
    assert np.array_equal(out[11:], np.zeros(5, np.float32))
