"""Fixes from a report-only review of the CLI and data pipeline (2026-12-04): `python -m
embtab`, the Criteo example's undefined AUC, the loader's integer IDs and separator message,
`key=a/b/c` spec values, and the warning of the generators' capped activity."""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_data
from embtab.data import load_dataset, load_interactions, power_law, power_law_stream, power_law_v2


# 1. python -m embtab ////////////////////////////////////////////////////////////////////////


def _python_m_embtab(*args, cwd):
    # the embtab this test process imports (an installed wheel, or the tree on PYTHONPATH;
    # the repository's python/ holds no compiled core in a clean clone)
    import embtab

    site = str(Path(embtab.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [site] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    return subprocess.run([sys.executable, "-m", "embtab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_dash_m_embtab_runs_the_cli_and_exits_with_its_status(tmp_path):
    """`python -m embtab` failed: "No module named embtab.__main__"."""
    ok = _python_m_embtab("--version", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("embtab "), ok.stderr
    # a mistake in the data set: main() returns 2 (not argparse's own exit), and that is the
    # process's exit status
    bad = _python_m_embtab("experiment", "dims", "--quiet", "--dataset", "synthetic:foo=1",
                           "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("embtab experiment dims: dataset spec 'synthetic:foo=1'")
    assert not (tmp_path / "out").exists()


# 2. examples/criteo_ctr.py: AUC of a single-class test split ////////////////////////////////


def _example():
    spec = importlib.util.spec_from_file_location("criteo_ctr", REPO / "examples" / "criteo_ctr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _criteo_rows(labels):
    ints = "\t".join(["1"] * 13)
    return "".join(f"{y}\t{ints}\t" + "\t".join(f"{(7 * r + f) % 5:08x}" for f in range(26)) + "\n"
                   for r, y in enumerate(labels))


def test_example_prints_an_undefined_auc_with_its_reason(tmp_path, capsys):
    """10 rows whose last 2 (the test split) are non-clicks: the table printed `nan`."""
    path = tmp_path / "one_class_test.txt"
    path.write_text(_criteo_rows([1, 0, 1, 0, 1, 0, 1, 0, 0, 0]))
    ex = _example()
    assert ex.main(["--data", str(path), "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("| undefined (all 2 test rows have label 0: AUC needs both classes) |") == 2
    assert "nan" not in out
    # a defined AUC is printed as before
    assert ex.auc_cell(0.75, np.array([0.0, 1.0])) == "0.7500"
    assert ex.auc_cell(float("nan"), np.array([1.0])) == \
        "undefined (1 test row, with label 1: AUC needs both classes)"


@pytest.mark.data
def test_example_on_three_criteo_rows_prints_no_nan(capsys):
    """The review's command: `--max-rows 3` of the sample leaves one test row, a non-click."""
    path = shared_data("criteo-sample") / "criteo_kaggle_train_head1000.txt"
    assert _example().main(["--data", str(path), "--max-rows", "3", "--epochs", "1",
                            "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| nan |" not in out and out.count("undefined (1 test row, with label 0") == 2


def test_example_refuses_too_few_rows_before_printing_the_table(capsys):
    """`--rows` below one batch's IDs printed the table's header, then the error."""
    ex = _example()
    assert ex.main(["--synthetic", "2000", "--rows", "10", "--epochs", "1", "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert cap.err.startswith("error: cuckoo: ") and "| model |" not in cap.out


# 3. the loader's integer IDs: ASCII digits only /////////////////////////////////////////////


@pytest.mark.parametrize("text, line, token", [
    ("1_000 5\n", 1, "1_000"),                        # int() read it as 1000
    ("1 6\n\uff11 \uff15\n", 2, "\uff11"),             # full-width 1: merged with user 1
    ("1 6\n2 \u0663\n", 2, "\u0663"),                 # Arabic-Indic 3
    ("1 2 1.0 5\n1 3 1.0 1_0\n", 2, "1_0"),           # a timestamp
])
def test_ids_are_ascii_decimal_integers(tmp_path, text, line, token):
    p = tmp_path / "ids.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_interactions(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}, line {line}: ") and repr(token) in msg
    assert "ASCII digits 0-9" in msg and f"int() would read it as {int(token)}" in msg


def test_signed_ascii_ids_still_load_and_hex_is_refused(tmp_path):
    p = tmp_path / "ok.txt"
    p.write_text("+7 5\n-1 5\n7 6\n")
    d = load_interactions(p)
    assert d.n_users == 2 and sorted(d.user_ids.tolist()) == [7, 2**64 - 1]
    c = tmp_path / "cats.txt"   # the categories file's item IDs follow the same rule
    c.write_text("\uff15 A\n")
    with pytest.raises(ValueError, match=r"cats.txt, line 1: item '\uff15' is not an integer"):
        load_interactions(p, categories=c)
    p.write_text("0x10 5\n")
    with pytest.raises(ValueError, match=r"line 1: user '0x10' is not an integer ID"):
        load_interactions(p)


# 4. a file separated by ';', '|' or ':' /////////////////////////////////////////////////////


@pytest.mark.parametrize("sep", [";", "|", ":"])
def test_other_separator_is_named_without_a_header_note(tmp_path, sep):
    p = tmp_path / "semi.txt"
    p.write_text(sep.join(["0", "24", "1", "1024"]) + "\n" + sep.join(["0", "28", "1", "1028"])
                 + "\n")
    with pytest.raises(ValueError) as e:
        load_interactions(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}, line 1: expected 2 to 4 fields")
    assert f"is separated by {sep!r}: fields are separated by whitespace (spaces or tabs) or " \
           "by commas" in msg
    assert "header" not in msg


def test_header_in_another_separator_gets_no_header_note(tmp_path):
    p = tmp_path / "h.txt"
    p.write_text("user;item\n1;2\n3;4\n")
    with pytest.raises(ValueError, match=r"line 2: .*'1;2' is separated by ';'") as e:
        load_interactions(p)
    assert "read as a header" not in str(e.value)
    # a header with no digit in it is still a header: whitespace data under it loads
    p.write_text("user|item\n1 2\n3 4\n")
    assert load_interactions(p).n_interactions == 2


def test_a_title_line_with_a_separator_and_digits_is_still_a_header(tmp_path):
    # A review of the change above: a one-field title holding a digit and ':', ';' or '|'
    # (a time, a version) was taken for data and the file refused. Data is a line that splits
    # at the separator into 2 to 4 numbers.
    p = tmp_path / "t.csv"
    for title in ("exported 2024-01-05 12:30", "item1:2", "v1.0;2"):
        p.write_text(f"{title}\n1,2\n3,4\n")
        assert load_interactions(p).n_interactions == 2, title
    p.write_text("exported 12:30\n1,x\n")   # a bad first data line: the title is named
    with pytest.raises(ValueError, match="read as a header"):
        load_interactions(p)


# 5. spec values of three probabilities //////////////////////////////////////////////////////

SMALL = "synthetic:n_users=30,n_items=40,interactions_per_user=5"


def test_spec_takes_three_probabilities_separated_by_slashes():
    d = load_dataset(SMALL + ",genres_per_item=1/0/0,interests_per_user=0/0/1", seed=4)
    ref = power_law(n_users=30, n_items=40, interactions_per_user=5, seed=4,
                    genres_per_item=(1, 0, 0), interests_per_user=(0, 0, 1))
    np.testing.assert_array_equal(d.items, ref.items)
    assert d.item_genres.lengths().max() == 1
    s = load_dataset("stream:n_users=40,n_items=60,n_windows=2,interests_per_user=1/0/0")
    assert s.n_interactions > 0


@pytest.mark.parametrize("spec, message", [
    (SMALL + ",genres_per_item=0.3", r"genres_per_item takes 3 probabilities \(for 1, 2, 3\) "
                                     r"separated by '/', e\.g\. genres_per_item=0\.55/0\.3/0\.15; "
                                     r"got '0\.3'"),
    (SMALL + ",interests_per_user=0.5/0.5", "interests_per_user takes 3 probabilities"),
    (SMALL + ",genres_per_item=a/b/c", "genres_per_item takes 3 probabilities"),
    (SMALL + ",genres_per_item=0.5/0.5/0.5", "genres_per_item must be 3 probabilities .* "
                                             "summing to 1"),
    ("synthetic:rank=3,genres_per_item=0.5/0.3/0.2",
     "genres_per_item is an argument of power_law, not of power_law_v2, which rank selects"),
    ("synthetic:foo=1", "genres_per_item=P1/P2/P3, interactions_per_user, "
                        "interests_per_user=P1/P2/P3, merit"),
])
def test_spec_triples_are_refused_naming_the_form(spec, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)


# 6. the generators' capped activity /////////////////////////////////////////////////////////


def test_rank_one_warns_that_every_user_is_capped():
    """rank=1 at 50 x 60: every user held the same 6 items, against 50 asked, without a word."""
    with pytest.warns(UserWarning, match=r"^power_law_v2: interactions_per_user=50 asked for "
                                         r"51\.0 interactions per user on average, but the data "
                                         r"holds only 6\.0 per user \(300 in all\): 50 of the 50 "
                                         r"users can like fewer items") as rec:
        d = power_law_v2(n_users=50, n_items=60, rank=1)
    assert d.n_interactions == 300
    assert [w.filename for w in rec] == [__file__]   # it points at the caller
    with pytest.warns(UserWarning, match="with rank=1 no user has the mainstream factor"):
        load_dataset("synthetic:n_users=50,n_items=60,rank=1")


def test_v1_warns_when_the_catalogue_is_too_small():
    """interactions_per_user=60 and =1000 both gave 446 interactions at 50 x 60."""
    for ipu in (60, 1000):
        with pytest.warns(UserWarning, match=rf"^power_law: interactions_per_user={ipu} asked "
                                             r"for .* holds only 8\.9 per user \(446 in all\).*"
                                             r"raise n_items") as rec:
            d = power_law(n_users=50, n_items=60, interactions_per_user=ipu)
        assert d.n_interactions == 446 and [w.filename for w in rec] == [__file__]


def test_no_capped_activity_warning_where_the_data_holds_what_was_asked():
    # (pytest turns any warning into an error)
    power_law(n_users=300, n_items=900, seed=1)
    d = power_law_v2(n_users=300, n_items=2000, rank=1, seed=1)   # one genre still holds ~50
    assert d.n_interactions > 0.5 * 50 * 300
    # the stream uses only the truth of its v2 base: no warning about the base's interactions
    # (the stream's own, that its 60 items run dry, is another matter)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        power_law_stream(n_users=50, n_items=60, n_windows=2, rank=1, interactions_per_window=40)
    assert not [w for w in rec if "power_law_v2" in str(w.message)]
