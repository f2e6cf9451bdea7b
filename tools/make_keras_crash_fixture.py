#!/usr/bin/env python3
"""A .keras archive whose model.weights.h5 crashes libhdf5 (fixtures/keras3/bad_fuzz_libhdf5_crash.keras).

fixtures/keras3/mlp.keras with its weights replaced by fixtures/hdf5/bad_fuzz_libhdf5_crash.h5 (found by
tools/fuzz.sh hdf5: libhdf5 dereferences NULL in its B-tree code). The archive itself is sound, so the crash happens
where ResNetKit hands the weights to libhdf5: that must be the HDF5 child process, not the command's own.
Standard library only. Run from the repository root: python3 tools/make_keras_crash_fixture.py
"""
import zipfile

SOURCE = "fixtures/keras3/mlp.keras"
WEIGHTS = "fixtures/hdf5/bad_fuzz_libhdf5_crash.h5"
TARGET = "fixtures/keras3/bad_fuzz_libhdf5_crash.keras"

with zipfile.ZipFile(SOURCE) as source, zipfile.ZipFile(TARGET, "w", zipfile.ZIP_DEFLATED) as target:
    for name in source.namelist():
        data = open(WEIGHTS, "rb").read() if name == "model.weights.h5" else source.read(name)
        target.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
print("wrote", TARGET)
