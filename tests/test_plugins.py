"""Your own model (issue 23), in process: parsing and identity of MODULE:CALLABLE, the contract's checks (each one line
naming what is wrong), per-file seeds for a plug-in's random augmentation and dropout, evaluation, the agent's and the
PS's identity checks, and the config hash covering the plug-in's code."""
from __future__ import annotations

import concurrent.futures
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shield_agent.errors import PluginRefused
from shield_agent.job import AgentJob
from shield_agent.plugin_admission import check_job_plugins
from shield_model.compute import ComputeSpec, GradientComputer
from shield_model.errors import ModelError, PluginError
from shield_model.evaluation import Evaluator
from shield_model.zoo.models import build_seeded_model
from shield_model.zoo.names import Network, network_choice
from shield_model.zoo.plugin_data import check_model, load_plugin_data
from shield_model.zoo.plugins import PluginSpec, identify, parse_plugin
from shield_model.zoo.seeds import SeededForward
from shield_model.zoo.sources import Origin, locate
from shield_ps.config import ServeConfig, diff_training_fields
from shield_ps.errors import ConfigError
from shield_ps.plugins import agent_args, job_fields, refusal, resolve_plugins
from wire.digest import digest_bytes
from wire.job import JobAccept

NET, DATA = "tests.plugin_models:Mlp", "tests.plugin_models:blobs"


def write_module(root: Path, name: str, body: str) -> Path:
    path = root / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def spec(**overrides) -> ComputeSpec:
    fields = dict(network=NET, dataset=DATA, data_dir="/nonexistent", seed=5, batch_size=40, num_files=4)
    fields.update(overrides)
    return ComputeSpec(**fields)


def test_a_value_is_a_builtin_or_a_plugin():
    assert network_choice("lenet") is Network.LENET
    assert network_choice("pkg.mod:Build") == PluginSpec("pkg.mod", "Build")
    for bad in ("pkg.mod:", ":Build", "pkg mod:Build", "pkg.mod:Build:x", "pkg..mod:Build", "1pkg:Build"):
        with pytest.raises(PluginError, match="expected MODULE:CALLABLE"):
            parse_plugin(bad)
    with pytest.raises(ModelError, match="or MODULE:CALLABLE for your own"):
        network_choice("LeNet5")


def test_identity_is_the_source_and_the_callable_name(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "ident_one", "def build(n):\n    return n\n")
    write_module(tmp_path, "ident_two", "def build(n):\n    return n\n\n# another line\n")
    write_module(tmp_path, "ident_three", "def build(n):\n    return n\n")
    package = tmp_path / "ident_pkg"
    package.mkdir()
    write_module(package, "__init__", "from ident_pkg.layers import build\n")
    write_module(package, "layers", "def build(n):\n    return n\n")
    one = identify(PluginSpec("ident_one", "build"))
    assert len(one.digest) == 64 and one == identify(PluginSpec("ident_one", "build"))
    assert identify(PluginSpec("ident_three", "build")).digest == one.digest  # same source, same name
    assert identify(PluginSpec("ident_two", "build")).digest != one.digest  # the source changed
    write_module(tmp_path, "ident_four", "def build(n):\n    return n\n\nother = build\n")
    four = identify(PluginSpec("ident_four", "build")).digest
    assert identify(PluginSpec("ident_four", "other")).digest != four  # another callable of the same module
    pkg = identify(PluginSpec("ident_pkg", "build")).digest
    from shield_model.zoo import plugins

    (package / "layers.py").write_text("def build(n):\n    return n + 0\n")
    plugins._source_digest.cache_clear()  # a new process: a package's submodules are part of its identity
    assert identify(PluginSpec("ident_pkg", "build")).digest != pkg


@pytest.mark.parametrize("network,dataset,message", [
    ("tests.no_such_module:Mlp", DATA, "no module named 'tests.no_such_module' here"),
    ("tests.plugin_models:Missing", DATA, "has no attribute 'Missing'"),
    ("tests.plugin_models:NOT_CALLABLE", DATA, "NOT_CALLABLE is a value of type int, not a function or class"),
    ("tests.plugin_models:not_a_module", DATA, r"not_a_module\(4\) returned a list, not a torch.nn.Module"),
    ("tests.plugin_models:wrong_logits", DATA, r"returned torch.float32 of shape \(2, 5\), expected float logits "
                                               r"of shape \(2, 4\)"),
    (NET, "tests.plugin_models:one_split", r"returned a Blobs, expected \(train, test\)"),
    (NET, "tests.plugin_models:uneven_shapes", r"train sample 1 has shape \(11,\), training sample 0 \(12,\)"),
    (NET, "tests.plugin_models:float_labels", "label is 1.0, expected an int >= 0"),
    (NET, "tests.plugin_models:arrays", "input is a ndarray, expected a real torch tensor"),
    (NET, "tests.plugin_models:raises", r"raises\('/nonexistent'\) raised FileNotFoundError: no blobs in"),
    ("LeNet", DATA, r"on a batch of shape \(2, 12\) raised RuntimeError"),
])
def test_a_plugin_that_breaks_the_contract_is_one_line_naming_it(network, dataset, message):
    with pytest.raises(PluginError, match=message) as caught:
        check_model(network, dataset, "/nonexistent")
    assert "\n" not in str(caught.value)


def test_resolve_plugins_records_the_digests_and_turns_errors_into_config_errors():
    config = ServeConfig(network=NET, dataset=DATA)
    resolved = resolve_plugins(config, "/nonexistent")
    assert resolved.network_digest == identify(parse_plugin(NET)).digest
    assert resolved.dataset_digest == identify(parse_plugin(DATA)).digest
    assert job_fields(resolved) == {"network_digest": resolved.network_digest,
                                    "dataset_digest": resolved.dataset_digest}
    assert agent_args(resolved) == ["--plugin", "tests.plugin_models"]
    assert resolve_plugins(ServeConfig(), "/x") == ServeConfig()  # built-ins: untouched, nothing imported
    with pytest.raises(ConfigError, match="has no attribute 'Missing'"):
        resolve_plugins(ServeConfig(network="tests.plugin_models:Missing", dataset=DATA), "/nonexistent")


def test_the_config_hash_covers_the_plugin_code_and_a_resume_names_it():
    config = resolve_plugins(ServeConfig(network=NET, dataset=DATA), "/nonexistent")
    changed = config.replace(network_digest="0" * 64)
    assert changed.config_hash() != config.config_hash()
    differences = diff_training_fields(config.to_dict(), changed)
    assert differences == [f"the code of network {NET} changed ({config.network_digest[:16]} -> 0000000000000000)"]
    assert ServeConfig().config_hash() == ServeConfig(network_digest=None).config_hash()  # old runs keep their hash


def test_plugin_data_directory_is_the_given_one_or_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIELD_DATA_DIR", str(tmp_path / "cache"))
    default = locate(DATA)
    assert (default.path, default.origin, default.hand_on) == (tmp_path / "cache", Origin.CACHE, None)
    given = locate(DATA, tmp_path)
    assert (given.path, given.origin, given.hand_on) == (tmp_path, Origin.GIVEN, str(tmp_path))
    with pytest.raises(Exception, match="does not exist"):
        locate(DATA, tmp_path / "nowhere")


def test_seeded_forward_seeds_only_models_that_draw():
    x = torch.ones(8, 12)
    dropout = SeededForward(torch.nn.Sequential(torch.nn.Linear(12, 4), torch.nn.Dropout(0.5)))
    first = dropout(x, 1, 2)
    assert dropout.draws is True
    assert torch.equal(dropout(x, 1, 2), first) and not torch.equal(dropout(x, 1, 3), first)
    lenet = SeededForward(build_seeded_model("LeNet", "MNIST", 0))
    lenet(torch.zeros(2, 1, 28, 28), 1)
    assert lenet.draws is False


def test_a_plugin_file_gradient_is_a_pure_function_of_seed_step_and_file():
    """Dropout and the dataset's random jitter draw per file: replicas agree bit for bit (also computed in parallel
    threads, also by another computer), and other steps or files draw otherwise."""
    a, b = GradientComputer(spec()), GradientComputer(spec())
    assert a.forward.draws is None
    params = a.initial_parameters()
    assert np.array_equal(params, b.initial_parameters())
    first = a.file_gradient(params, 3, 1).gradient.copy()
    assert a.forward.draws is True
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two slots' computers at once (each one thread's)
        futures = [pool.submit(lambda c: [c.file_gradient(params, 3, 1).gradient.copy() for _ in range(4)], c)
                   for c in (a, b)]
        results = [g for f in futures for g in f.result()]
    assert all(digest_bytes(r.view(np.uint8)) == digest_bytes(first.view(np.uint8)) for r in results)
    assert not np.array_equal(a.file_gradient(params, 4, 1).gradient, first)
    assert not np.array_equal(a.file_gradient(params, 3, 2).gradient, first)
    inputs, _ = a.file_inputs(3, 1)
    again, _ = a.file_inputs(3, 1)
    assert torch.equal(inputs, again) and not torch.equal(inputs, a.file_inputs(3 + a.steps_per_epoch, 1)[0][:0])
    assert a.train_samples == 600 and a.num_params == sum(p.numel() for p in a.model.parameters())


def test_evaluation_of_a_plugin_with_batchnorm_and_dropout_is_deterministic():
    computer = GradientComputer(spec())
    params = computer.initial_parameters()
    evaluator = Evaluator(NET, DATA, "/nonexistent", seed=5, bn_samples=200, batch_size=50)
    assert evaluator.norms and evaluator.top_k == 4
    first = evaluator.evaluate(params)
    assert first == evaluator.evaluate(params) == Evaluator(NET, DATA, "/nonexistent", seed=5, bn_samples=200,
                                                             batch_size=50).evaluate(params)
    assert first.samples == 200 and 0.0 <= first.top1 <= 1.0 and first.top5 == 1.0


def test_plugin_data_reads_the_contract():
    data = load_plugin_data(parse_plugin(DATA), "/nonexistent")
    assert (data.train_size, data.test_size, data.num_classes, data.sample_shape) == (600, 200, 4, (12,))
    x, y = data.test_batch(0, 5)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (5, 12)


def _job(**fields) -> AgentJob:
    header = {"worker": 0, "files": [0], "network": NET, "dataset": "MNIST", "seed": 0, "batch_size": 10,
              "num_files": 1, "threads": 1, "codec": "auto", "codec_level": 1, **fields}
    return AgentJob.from_header(header)


def test_an_agent_checks_the_plugin_before_loading_anything():
    digest = identify(parse_plugin(NET)).digest
    assert check_job_plugins(_job(network_digest=digest), ["tests.plugin_models"]) == {"network_digest": digest}
    assert check_job_plugins(_job(network="LeNet"), []) == {}
    with pytest.raises(PluginRefused, match="join with --plugin tests.plugin_models"):
        check_job_plugins(_job(network_digest=digest), [])
    with pytest.raises(PluginRefused) as refused:
        check_job_plugins(_job(network_digest="ab" * 32), ["tests.plugin_models"])
    assert str(refused.value) == (f"this agent's copy of tests.plugin_models differs from the PS's: digest "
                                  f"{digest[:16]} here, abababababababab on the PS (--network {NET}); install the PS's "
                                  "version here")
    assert refused.value.code == "job"
    with pytest.raises(Exception, match="malformed JOB"):
        _job(network_digest="not hex")


def test_the_ps_refuses_an_agent_whose_copy_differs():
    config = resolve_plugins(ServeConfig(network=NET, dataset=DATA), "/nonexistent")
    ours = JobAccept(1, 0, network_digest=config.network_digest, dataset_digest=config.dataset_digest)
    assert refusal(config, ours) is None
    assert refusal(ServeConfig(), JobAccept(1, 0)) is None
    why = refusal(config, replace(ours, dataset_digest="cd" * 32))
    assert why == (f"the agent's copy of tests.plugin_models differs from the PS's: digest cdcdcdcdcdcdcdcd there, "
                   f"{config.dataset_digest[:16]} here (--dataset {DATA}); install the PS's version on the agent")
    assert "reports no copy of it" in refusal(config, JobAccept(1, 0, dataset_digest=config.dataset_digest))


def test_an_operation_without_a_deterministic_kernel_warns_instead_of_failing_the_file():
    """A model using such an operation still computes its files (its replicas may differ: the determinism classes and
    the sketch vote take it from there) instead of raising, which would drop every file it holds."""
    computer = GradientComputer(spec(network="tests.plugin_models:Unpooling"))
    with pytest.warns(UserWarning, match="does not have a deterministic implementation"):
        result = computer.file_gradient(computer.initial_parameters(), 0, 0)
    assert np.isfinite(result.gradient).all() and np.abs(result.gradient).sum() > 0
    assert torch.are_deterministic_algorithms_enabled()
