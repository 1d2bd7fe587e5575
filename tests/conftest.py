"""Put the repository root on sys.path, and provide the tiny HDF5 cache that training tests share."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A random 32 px cache of 48 images in the layout data_lfw.py writes."""
    path = tmp_path_factory.mktemp("data") / "tiny_32.hdf5"
    images = np.random.default_rng(0).integers(0, 256, size=(48, 3, 32, 32), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("lfw", data=images)
        dataset.attrs.update(crop=50, scale=32, count=48, source="synthetic", seed=1)
    return path
