import Foundation
@testable import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

/// `fixtures/hdf5/` (made by tools/make_hdf5_fixtures.py) and the comparison the tolerances refer to.
enum HDF5Fixtures {
    static let directory = TestPaths.fixtures.appendingPathComponent("hdf5")
    static let reference = TestPaths.reference

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The committed 2x3x40x40 input (NCHW) through the imported model's inference plan.
    static func logits(of imported: ImportedModel) throws -> [Float] {
        let input = try readFloats(directory.appendingPathComponent("input_2x3x40x40.f32"))
        let plan = try InferencePlan(architecture: imported.checkpoint.architecture, state: imported.checkpoint.state)
        return plan.run(images: nhwc(fromNCHW: input, batch: 2, channels: 3, height: 40, width: 40), count: 2, height: 40, width: 40)
    }
}

final class HDF5ImporterTests: XCTestCase {
    func importFixture(_ name: String) throws -> ImportedModel {
        try HDF5Importer.importModel(path: HDF5Fixtures.path(name), options: ImportOptions())
    }

    func assertLogits(_ file: String, _ expected: String, tolerance: Float = 1e-4, line: UInt = #line) throws -> ImportedModel {
        let imported = try importFixture(file)
        let got = try HDF5Fixtures.logits(of: imported)
        let want = try readFloats(HDF5Fixtures.directory.appendingPathComponent(expected))
        let error = relativeError(got, want)
        XCTAssertLessThan(error, tolerance, "\(file): relative error \(error)", line: line)
        return imported
    }

    func testFlatStateDictMatchesPyTorch() throws {
        let imported = try assertLogits("flat.h5", "logits_linear.f32")
        XCTAssertEqual(imported.checkpoint.config, ModelConfig(numClasses: 5, head: .linear, baseWidth: 4))
        XCTAssertEqual(imported.sourceFormat, "HDF5 (PyTorch state_dict, flat names)")
        XCTAssertEqual(imported.checkpoint.state["bn1.num_batches_tracked"]?.data, [1000])
        XCTAssertFalse(imported.batchNormFolded)
    }

    func testNestedGroupsWithoutCountersMatchPyTorch() throws {
        let imported = try assertLogits("nested.h5", "logits_linear.f32")
        XCTAssertEqual(imported.sourceFormat, "HDF5 (PyTorch state_dict, nested groups)")
        XCTAssertNil(imported.checkpoint.state["bn1.num_batches_tracked"])
        XCTAssertTrue(imported.notes.contains { $0.contains("no num_batches_tracked") }, "\(imported.notes)")
    }

    func testFloat64AndFloat16AreConverted() throws {
        let double = try assertLogits("float64.h5", "logits_linear.f32")
        XCTAssertTrue(double.notes.contains("float64 tensors converted to float32"), "\(double.notes)")
        let half = try assertLogits("float16.h5", "logits_float16.f32")
        XCTAssertTrue(half.notes.contains("float16 tensors converted to float32"), "\(half.notes)")
    }

    func testMLPHeadMatchesPyTorch() throws {
        let imported = try assertLogits("mlp.h5", "logits_mlp.f32")
        XCTAssertEqual(imported.checkpoint.config, ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 16, baseWidth: 4))
    }

    func testKerasModelSaveLayoutUsesFileEpsilon() throws {
        let imported = try assertLogits("keras.h5", "logits_keras.f32")
        XCTAssertEqual(imported.sourceFormat, "HDF5 (Keras)")
        XCTAssertEqual(imported.producer, "keras 2.13.1 (tensorflow)")
        XCTAssertEqual(imported.checkpoint.config.batchNormEpsilon, 1.001e-5)
        // PyTorch's padding the keras.applications way: ZeroPadding2D, then 'valid' at stride 2.
        XCTAssertEqual(imported.checkpoint.config.samePadding, [])
        // The file lists each projection's BatchNorm before the block's bn2: only the graph pairs them right.
        XCTAssertTrue(imported.notes.contains { $0.contains("each paired with the BatchNormalization it feeds in the model_config graph") },
                      "\(imported.notes)")
    }

    func testKerasSplitLayerNamesWithConvBiasesAndDefaultEpsilon() throws {
        let imported = try assertLogits("keras_split.h5", "logits_keras_split.f32")
        XCTAssertEqual(imported.checkpoint.config.batchNormEpsilon, 1e-3)
        XCTAssertTrue(imported.notes.contains { $0.contains("BatchNormalization at the same position (no usable model_config graph)") },
                      "\(imported.notes)")
        XCTAssertTrue(imported.notes.contains("20 convolution biases folded into the following BatchNorm's running_mean"), "\(imported.notes)")
    }

    func testClassNamesAreApplied() throws {
        let imported = try HDF5Importer.importModel(path: HDF5Fixtures.path("flat.h5"),
                                                    options: ImportOptions(classNames: ["a", "b", "c", "d", "e"]))
        XCTAssertEqual(imported.checkpoint.classNames, ["a", "b", "c", "d", "e"])
        XCTAssertThrowsError(try HDF5Importer.importModel(path: HDF5Fixtures.path("flat.h5"), options: ImportOptions(classNames: ["a"]))) {
            XCTAssertEqual(($0 as? FileError)?.problem, "the model has 5 classes but 1 class names were given")
        }
    }

    // MARK: Bad files

    func assertRejected(_ name: String, _ expected: String, line: UInt = #line) {
        let path = HDF5Fixtures.path(name)
        XCTAssertThrowsError(try HDF5Importer.importModel(path: path, options: ImportOptions()), line: line) { error in
            guard let fileError = error as? FileError else { return XCTFail("\(error) is not a FileError", line: line) }
            XCTAssertEqual(fileError.path, path, line: line)
            XCTAssertTrue(fileError.problem.contains(expected), "\(fileError.problem)", line: line)
            XCTAssertFalse(fileError.description.contains("\n"), line: line)
        }
    }

    func testRejectsNonHDF5() {
        assertRejected("bad_random.h5", "not an HDF5 file (no HDF5 signature)")
        assertRejected("does_not_exist.h5", "no such file")
    }

    func testRejectsTruncatedFile() {
        assertRejected("bad_truncated.h5", "cannot open the HDF5 file, it is truncated or damaged (truncated file")
    }

    func testRejectsOtherArchitectures() {
        assertRejected("bad_resnet34.h5", "not a ResNet-18: 'layer1.2.bn1.bias' is block 2 of layer1 (ResNet-18 has 2 per stage; ResNet-34 has more)")
        assertRejected("bad_resnet50.h5", "not a ResNet-18: 'layer1.0.conv3.weight' belongs to a Bottleneck block (ResNet-50/101/152)")
    }

    func testNamesMisshapenAndMissingTensors() {
        assertRejected("bad_misshapen.h5", "layer2.0.downsample.0.weight: expected [4, 2, 1, 1], got [4, 2, 3, 3]")
        assertRejected("bad_missing.h5", "not a ResNet-18 of the shape its conv1 and classifier imply: layer3.1.bn2.running_var: missing")
    }

    func testRejectsAbsurdDimensionsBeforeReading() {
        assertRejected("bad_absurd.h5", "dataset 'fc.weight' claims shape [1048576, 1048576], absurdly large for a weight")
    }

    func testRejectsTextDatasets() {
        assertRejected("bad_strings.h5", "dataset 'fc.bias' holds text, expected floating-point numbers")
    }

    func testKerasFileWithMissingConvolutionIsNamed() {
        assertRejected("bad_keras_missing_conv.h5", "found 19 Conv2D, 20 BatchNormalization and 1 Dense layers")
    }
}

final class HDF5BadFileTests: XCTestCase {
    func assertRejected(_ name: String, _ expected: String, line: UInt = #line) {
        let path = HDF5Fixtures.path(name)
        XCTAssertThrowsError(try HDF5Importer.importModel(path: path, options: ImportOptions()), line: line) { error in
            XCTAssertEqual(error as? FileError, FileError(path, expected), line: line)
        }
    }

    func testRejectsNonFiniteWeights() {
        assertRejected("bad_nan.h5", "tensor fc.bias holds NaN or infinite values")
    }

    func testRejectsFilesFarLargerThanTheModelBeforeReading() {
        assertRejected("bad_too_many_values.h5",
                       "the datasets hold 134229623 values, far more than the 11895 of the ResNet-18 its conv1 and classifier describe")
    }

    func testKerasLayerOfAnotherKindIsNamed() {
        assertRejected("bad_keras_depthwise.h5", "Keras layer 'conv2d_5' has weights [\"depthwise_kernel\"]: not Conv2D, Dense or BatchNormalization, which is all a ResNet-18 holds")
    }

    func testKerasShapeProblemsNameTheKerasLayer() {
        assertRejected("bad_keras_misshapen.h5", "Keras weights do not fit ResNet-18 at base width 2: "
                       + "layer1.1.bn1.weight: expected [2], got [3] (Keras layer 'batch_normalization_3'); "
                       + "layer1.1.bn1.bias: expected [2], got [3] (Keras layer 'batch_normalization_3'); "
                       + "layer1.1.bn1.running_mean: expected [2], got [3] (Keras layer 'batch_normalization_3'); "
                       + "layer1.1.bn1.running_var: expected [2], got [3] (Keras layer 'batch_normalization_3')")
    }
}

final class HDF5KerasNestedTests: XCTestCase {
    /// A sub-model stored as one Keras layer whose weight names carry the inner layers, in float64.
    func testNestedModelInFloat64MatchesPyTorch() throws {
        let imported = try HDF5Importer.importModel(path: HDF5Fixtures.path("keras_nested_float64.h5"), options: ImportOptions())
        let expected = try readFloats(HDF5Fixtures.directory.appendingPathComponent("logits_keras_default_eps.f32"))
        XCTAssertLessThan(relativeError(try HDF5Fixtures.logits(of: imported), expected), 1e-4)
        XCTAssertEqual(imported.checkpoint.config.batchNormEpsilon, 1e-3)
        XCTAssertTrue(imported.notes.contains("102 float64/float16 tensors converted to float32"), "\(imported.notes)")
    }

    /// A stride-2 layer that pads neither PyTorch's way nor TensorFlow's computes another network: refused, naming
    /// the Keras layer; 'same' at stride 2 is TensorFlow's rule, 'same' at stride 1 is PyTorch's.
    func testKerasPaddingRules() throws {
        func config(stemPadding: String, pad: [[Int]]?) -> [String: Any] {
            var layers: [[String: Any]] = []
            var stem: [String: Any] = ["class_name": "Conv2D", "name": "stem",
                                       "config": ["name": "stem", "strides": [2, 2], "padding": stemPadding]]
            if let pad {
                layers.append(["class_name": "ZeroPadding2D", "name": "pad", "config": ["name": "pad", "padding": pad]])
                stem["inbound_nodes"] = [[["pad", 0, 0, [:] as [String: Any]]]]
            }
            layers.append(stem)
            layers.append(["class_name": "Conv2D", "name": "c3", "config": ["name": "c3", "strides": [1, 1], "padding": "same"]])
            return ["config": ["layers": layers]]
        }
        let architecture = Architecture(ModelConfig(baseWidth: 2))
        let names = ["conv1": "stem", "layer1.0.conv1": "c3"]
        func rules(_ c: [String: Any]) throws -> Set<String> {
            try KerasWeights.paddingRules(c, kerasNames: names, architecture: architecture, path: "m.h5").same
        }
        XCTAssertEqual(try rules(config(stemPadding: "same", pad: nil)), ["conv1"])
        XCTAssertEqual(try rules(config(stemPadding: "valid", pad: [[3, 3], [3, 3]])), [])
        XCTAssertThrowsError(try rules(config(stemPadding: "valid", pad: nil))) { error in
            XCTAssertEqual("\(error)", "m.h5: Keras layer 'stem' (conv1) pads its input by [0, 0, 0, 0] (top, left, bottom, right) where ResNet-18 pads 3 on every side or TensorFlow's 'same' would: not a ResNet-18 this tool computes")
        }
        XCTAssertThrowsError(try rules(config(stemPadding: "valid", pad: [[2, 3], [2, 3]])))
    }
}
