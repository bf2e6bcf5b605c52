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


def _criteo_line(label="1", c2="a"):
    cats = ["68fd1e64", c2] + [""] * 24
    return "\t".join([label] + ["1"] * 13 + cats) + "\n"


def test_example_reads_criteo_variants_or_names_the_fault(tmp_path):
    import gzip

    read = load_example().read_criteo
    rows = _criteo_line() + _criteo_line("0", "ff")
    header = "\t".join(["label"] + [f"I{k}" for k in range(1, 14)] +
                       [f"C{k}" for k in range(1, 27)]) + "\n"
    (tmp_path / "h.txt").write_text(header + rows + "\n")      # a header, a trailing blank line
    with gzip.open(tmp_path / "g.gz", "wt") as f:
        f.write(rows)
    for name in ("h.txt", "g.gz"):
        labels, ids = read(tmp_path / name)
        assert labels.tolist() == [1.0, 0.0]
        assert ids[:, 0].tolist() == [0x68FD1E64] * 2 and ids[:, 1].tolist() == [(1 << 32) | 0xA, (1 << 32) | 0xFF]
        assert (ids[:, 2:] == -1).all()
    assert read(tmp_path / "h.txt", max_rows=1)[0].tolist() == [1.0]
    bad = {
        "wide.txt": (_criteo_line(c2="100000000"), r"wide.txt:1: C2 '100000000' is not a 32-bit value"),
        "hex.txt": (rows + _criteo_line(c2="zz"), r"hex.txt:3: C2 'zz' is not a hexadecimal"),
        "label.txt": (rows + _criteo_line(label="n/a"), r"label.txt:3: label 'n/a' is not 0 or 1"),
        "empty.txt": ("", r"empty.txt: no rows"),
        "onlyhead.txt": (header, r"onlyhead.txt: no rows .*line 1, label 'label', was read as a header"),
    }
    for name, (text, match) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            read(tmp_path / name)
    # the script itself: a one-line error and exit status 2, not a crash inside the model
    assert load_example().main(["--data", str(tmp_path / "empty.txt"), "--no-progress"]) == 2


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


def test_example_never_trains_on_its_test_rows(monkeypatch):
    """The training loop's last batch stopped at the batch size, not at the 80% split: with
    1,000 rows and batches of 256 it trained on rows 768-1023, every test row included, and
    on labels shuffled at random it reported an AUC of 0.92-0.99."""
    ex = load_example()
    labels, ids = ex.synthetic_criteo(1000, 0)
    seen = []
    make = ex.make_model

    def recording(*a, **k):
        model = make(*a, **k)
        forward = model.forward

        def fwd(x):
            if model.training:
                seen.append(len(x))
            return forward(x)

        model.forward = fwd
        return model

    monkeypatch.setattr(ex, "make_model", recording)
    args = ex.argparse.Namespace(seed=0, rows=4096, dim=4, min_count=1, lr=0.01, epochs=1,
                                 batch=256, no_progress=True)
    ex.train_eval("hashed", labels, ids, args)
    assert sum(seen) == 800 and seen[-1] == 800 - 3 * 256


@pytest.mark.parametrize("flag, value", [("--batch", "0"), ("--synthetic", "0"),
                                         ("--synthetic", "-5"), ("--rows", "0"),
                                         ("--min-count", "0"), ("--lr", "nan")])
def test_example_refuses_bad_flags_in_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        load_example().main([flag, value, "--no-progress"])
    assert e.value.code == 2
    assert f"argument {flag}: must be" in capsys.readouterr().err


def test_example_too_few_rows_is_one_line(capsys):
    ex = load_example()
    assert ex.main(["--synthetic", "2000", "--rows", "10", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cuckoo: ") and "Traceback" not in err


def test_the_rows_pending_a_torch_optimizer_step_stay_a_few_arrays():
    """A module trained by a fused optimizer alone never takes a torch optimizer step, so its
    list of rows handed to new IDs is never cleared; each admitting step used to add an array
    to it and sum the lengths of all of them. It is merged as a binary counter: O(log) arrays,
    the same rows in the same order."""
    import embtab.optim as eo
    from embtab.nn import CuckooEmbedding

    m = CuckooEmbedding(4096, 2, seed=1, optimizer=eo.SGD(lr=0.1))
    handed = []
    for step in range(3000):
        ids = torch.tensor([7, 10_000 + step])  # one new ID per step
        m(ids).sum().backward()
        handed.append(int(m.lookup(ids[1:])))
        assert len(m._pending_rows) <= 13, step
    assert np.concatenate(m._pending_rows).tolist() == [int(m.lookup(torch.tensor([7])))] + handed
