"""Smoke tests of the module benchmark and the Criteo example (they run, their results are sane)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from conftest import REPO, shared_data


def load_example():
    spec = importlib.util.spec_from_file_location("criteo_ctr", REPO / "examples" / "criteo_ctr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_auc_matches_pairwise_definition():
    ex = load_example()
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(np.float32)
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert ex.auc(y, s) == pytest.approx(pairwise)


def test_example_synthetic_runs(capsys):
    ex = load_example()
    assert ex.main(["--synthetic", "3000", "--rows", "8192", "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "CuckooEmbeddingBagCollection" in out and "HashedEmbeddingBagCollection" in out


@pytest.mark.data
def test_example_reads_criteo_sample():
    path = shared_data("criteo-sample") / "criteo_kaggle_train_head1000.txt"
    labels, ids = load_example().read_criteo(path)
    assert labels.shape == (1000,) and ids.shape == (1000, 26)
    assert labels.sum() == 205  # the sample's README: 205 positives
    assert ids.dtype == np.int64 and np.all((ids == -1) | (ids >> 32 < 26))


@pytest.mark.slow
def test_module_benchmark_quick_runs():
    from embtab.benchmarks import module

    torch.manual_seed(0)
    res = module.run(quick=True, repeats=1)
    json.dumps(res)
    assert res["embedding"]["cuckoo_num_ids"] > 0
    for part in ("embedding", "bag"):
        assert all(v > 0 for v in res[part]["seconds_per_step"].values())
    assert "| CuckooEmbedding |" in module.format_markdown(res)
