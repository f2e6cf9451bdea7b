import CHDF5
import Foundation
import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

/// The full-size reference model, written as h5py would write it (one dataset per state-dict key, int64
/// counters) with libhdf5 in the test itself, so no 45 MB fixture and no Python are needed.
final class HDF5ReferenceTests: XCTestCase {
    typealias Entry = (shape: [Int], data: [Float], isInteger: Bool)

    /// Writes each tensor as a dataset named by its key: float32, or int64 for the counters.
    func writeStateDict(_ entries: [String: Entry], to path: String) throws {
        H5open()
        let file = H5Fcreate(path, 2 /* H5F_ACC_TRUNC */, hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT))
        XCTAssertGreaterThanOrEqual(file, 0)
        defer { H5Fclose(file) }
        // Names with slashes create their groups, as h5py does.
        let linkProperties = H5Pcreate(H5P_CLS_LINK_CREATE_ID_g)
        defer { H5Pclose(linkProperties) }
        H5Pset_create_intermediate_group(linkProperties, 1)
        for (name, entry) in entries {
            var dims = entry.shape.map { hsize_t($0) }
            let space = dims.isEmpty ? H5Screate(H5S_SCALAR) : H5Screate_simple(Int32(dims.count), &dims, nil)
            defer { H5Sclose(space) }
            let isInteger = entry.isInteger
            let dataset = H5Dcreate2(file, name, isInteger ? H5T_STD_I64LE_g : H5T_IEEE_F32LE_g, space,
                                     linkProperties, hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT))
            XCTAssertGreaterThanOrEqual(dataset, 0, name)
            defer { H5Dclose(dataset) }
            let status: herr_t
            if isInteger {
                let values = entry.data.map { Int64($0) }
                status = H5Dwrite(dataset, H5T_NATIVE_LLONG_g, hid_t(H5S_ALL), hid_t(H5S_ALL), hid_t(H5P_DEFAULT), values)
            } else {
                status = H5Dwrite(dataset, H5T_NATIVE_FLOAT_g, hid_t(H5S_ALL), hid_t(H5S_ALL), hid_t(H5P_DEFAULT), entry.data)
            }
            XCTAssertGreaterThanOrEqual(status, 0, name)
        }
    }

    func testFilesWithoutUsableWeightsAreNamed() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("resnetkit-hdf5-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let empty = folder.appendingPathComponent("empty.h5").path
        try writeStateDict([:], to: empty)
        let other = folder.appendingPathComponent("other.h5").path
        try writeStateDict(["encoder.weight": ([2, 2], [1, 2, 3, 4], false)], to: other)
        let keras3 = folder.appendingPathComponent("keras3.weights.h5").path
        try writeStateDict(["layers/conv2d/vars/0": ([2], [1, 2], false)], to: keras3)
        let ambiguous = folder.appendingPathComponent("ambiguous.h5").path
        try writeStateDict(["conv1.weight": ([1], [1], false), "conv1/weight": ([1], [2], false)], to: ambiguous)
        for (path, problem) in [(empty, "the HDF5 file holds no datasets"),
                                (ambiguous, "datasets 'conv1/weight' and 'conv1.weight' both name tensor conv1.weight"),
                                (other, "no ResNet weights found: neither a conv1.weight dataset nor Keras layer_names"),
                                (keras3, "Keras layer 'conv2d' has weights [\"kernel\"]: not Conv2D, Dense or BatchNormalization, which is all a ResNet-18 holds")] {
            XCTAssertThrowsError(try HDF5Importer.importModel(path: path, options: ImportOptions())) {
                XCTAssertEqual($0 as? FileError, FileError(path, problem))
            }
        }
    }

    func testFullSizeReferenceThroughHDF5MatchesPyTorch() throws {
        let (entries, _) = try SafeTensors.read(path: HDF5Fixtures.reference.appendingPathComponent("resnet18.safetensors").path)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("resnetkit-hdf5-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("resnet18.h5").path
        try writeStateDict(entries.mapValues { ($0.shape, $0.data, $0.dtype == "I64") }, to: path)

        let imported = try HDF5Importer.importModel(path: path, options: ImportOptions())
        XCTAssertEqual(imported.checkpoint.config, ModelConfig())
        XCTAssertEqual(imported.checkpoint.state["layer4.1.bn2.num_batches_tracked"]?.data, [1000])
        let input = try readFloats(HDF5Fixtures.reference.appendingPathComponent("input_4x3x96x96.f32"))
        let plan = try InferencePlan(architecture: imported.checkpoint.architecture, state: imported.checkpoint.state)
        let logits = plan.run(images: nhwc(fromNCHW: input, batch: 4, channels: 3, height: 96, width: 96), count: 4, height: 96, width: 96)
        let expected = try readFloats(HDF5Fixtures.reference.appendingPathComponent("logits_4x1000_from_96.f32"))
        XCTAssertLessThan(relativeError(logits, expected), 1e-5)
    }
}
