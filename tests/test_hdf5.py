"""HDF5 files: readable by pandas 2 (DeepLabCut 3.0, movement) and never unpickled unchecked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tables

from element_pose.io.dlc import read_dlc_output, read_dlc_project, write_dlc_output
from element_pose.io.hdf5 import PANDAS_HDF_VERSION, UnsafeFileError, check_no_code
from element_pose.sample import make_sample

#: A Python with pandas 2 (DeepLabCut's peer virtualenv on the benchmark machines).
PANDAS2_PYTHON = Path(os.environ.get("PANDAS2_PYTHON",
                                     Path.home() / ".cache/peer-dlc-venv/bin/python"))


class _RunsCode:
    """Unpickling this calls a function: what a crafted file would do."""

    def __reduce__(self):
        return (os.getpid, ())


def test_dlc_output_has_the_attribute_pandas_2_needs(tmp_path):
    pose = np.random.default_rng(0).random((6, 2, 3))
    h5, _ = write_dlc_output(tmp_path / "pose", pose, ["a", "b"], "scorer")
    with tables.open_file(h5) as f:
        assert f.root.df_with_missing._v_attrs.pandas_version == PANDAS_HDF_VERSION
    read, parts, scorer = read_dlc_output(h5)
    np.testing.assert_allclose(read, pose)
    assert (parts, scorer) == (["a", "b"], "scorer")


@pytest.mark.skipif(not PANDAS2_PYTHON.is_file(), reason="no Python with pandas 2 here")
def test_pandas_2_reads_the_dlc_output(tmp_path):
    pose = np.random.default_rng(1).random((5, 3, 3))
    h5, _ = write_dlc_output(tmp_path / "pose", pose, ["a", "b", "c"], "scorer")
    code = ("import pandas as pd, sys; assert pd.__version__.startswith('2'), pd.__version__; "
            "df = pd.read_hdf(sys.argv[1]); print(df.shape[0], df.shape[1], "
            "repr(float(df.iloc[2, 4])))")
    out = subprocess.run([str(PANDAS2_PYTHON), "-c", code, str(h5)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows, cols, value = out.stdout.split()
    assert (int(rows), int(cols)) == (5, 9)
    assert float(value) == pytest.approx(pose[2, 1, 1])


def test_pickled_code_is_refused_before_reading(tmp_path):
    # an object column (pandas 'fixed' format pickles it)
    fixed = tmp_path / "fixed.h5"
    with pytest.warns(Warning):
        pd.DataFrame({"a": [_RunsCode()]}).to_hdf(fixed, key="df_with_missing", format="fixed")
    with pytest.raises(UnsafeFileError, match="fixed.h5.*pickled.*not read"):
        read_dlc_output(fixed)
    # a pickled attribute (PyTables unpickles string attributes ending in '.')
    pose = np.zeros((2, 1, 3))
    h5, _ = write_dlc_output(tmp_path / "attr", pose, ["a"], "s")
    with tables.open_file(h5, mode="a") as f:
        f.root.df_with_missing._v_attrs.extra = _RunsCode()
    with pytest.raises(UnsafeFileError, match="attribute 'extra'"):
        read_dlc_output(h5)
    # harmless pickles (lists, dicts: pandas' own metadata) pass
    check_no_code(write_dlc_output(tmp_path / "ok", pose, ["a"], "s")[0])
    with pytest.raises(ValueError, match="not a readable HDF5"):
        check_no_code(tmp_path / "ok.csv")


def test_label_file_with_pickled_code_is_refused(tmp_path):
    sample = make_sample(tmp_path / "proj", n_frames=6, n_labeled=3, width=64, height=48, seed=2)
    csv = next((sample.project_dir / "labeled-data").glob("*/CollectedData_*.csv"))
    frame = pd.read_csv(csv, header=[0, 1, 2], index_col=0)
    csv.unlink()
    h5 = csv.with_suffix(".h5")
    frame.to_hdf(h5, key="df_with_missing", format="table")
    with tables.open_file(h5, mode="a") as f:
        f.root.df_with_missing._v_attrs.extra = _RunsCode()
    with pytest.raises(UnsafeFileError):
        read_dlc_project(sample.project_dir)
