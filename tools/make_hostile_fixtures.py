#!/usr/bin/env python3
"""HDF5 files that point outside themselves (fixtures/hdf5/bad_external_*.h5, bad_virtual.h5).

Each is fixtures/hdf5/flat.h5 (a valid PyTorch state_dict) with bn1.running_mean replaced by data from elsewhere:
external raw storage in /etc/passwd, an external link to flat.h5, a virtual dataset drawn from flat.h5. A reader
that follows any of them imports a model built from bytes that are not in the file; ResNetKit must refuse.
Needs h5py. Run from the repository root: python3 tools/make_hostile_fixtures.py
"""
import os
import h5py
import numpy as np

HERE = "fixtures/hdf5"
SOURCE = os.path.join(HERE, "flat.h5")
TARGET = "bn1.running_mean"


def copy_except(src, dst):
    for name in src.keys():
        if name != TARGET:
            dst.create_dataset(name, data=src[name][()])


with h5py.File(SOURCE, "r") as src:
    shape = src[TARGET].shape
    with h5py.File(os.path.join(HERE, "bad_external_storage.h5"), "w") as f:
        copy_except(src, f)
        size = int(np.prod(shape)) * 4
        f.create_dataset(TARGET, shape=shape, dtype="<f4", external=[("/etc/passwd", 0, size)])
    with h5py.File(os.path.join(HERE, "bad_external_link.h5"), "w") as f:
        copy_except(src, f)
        f[TARGET] = h5py.ExternalLink("flat.h5", "/" + TARGET)
    with h5py.File(os.path.join(HERE, "bad_virtual.h5"), "w", libver=("v110", "v110")) as f:
        copy_except(src, f)
        layout = h5py.VirtualLayout(shape=shape, dtype="<f4")
        layout[:] = h5py.VirtualSource("flat.h5", TARGET, shape=shape)
        f.create_virtual_dataset(TARGET, layout)
