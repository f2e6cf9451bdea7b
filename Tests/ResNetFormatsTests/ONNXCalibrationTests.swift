import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// Folded BatchNorm rebuilt from calibration images, against PyTorch (fixtures/onnx/calibration_expected.safetensors).
final class ONNXCalibrationTests: XCTestCase {
    func calibratedImport() throws -> (ImportedModel, [String: SafeTensors.Entry]) {
        let batch = nhwc(fromNCHW: try ONNXFixtures.floats("calib_4x3x64x64.f32"), batch: 4, channels: 3, height: 64, width: 64)
        let options = ImportOptions(calibration: CalibrationImages(pixels: batch, count: 4, height: 64, width: 64))
        let imported = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_folded.onnx"), options: options)
        let expected = try SafeTensors.read(path: ONNXFixtures.path("calibration_expected.safetensors")).tensors
        return (imported, expected)
    }

    /// running_mean / running_var equal PyTorch's train-mode batch statistics (mean, biased variance) of
    /// the same convolution outputs on the calibration batch.
    func testRebuiltStatisticsEqualPyTorchBatchStatistics() throws {
        let (imported, expected) = try calibratedImport()
        let bnNames = imported.checkpoint.architecture.namedConvolutions.map(\.batchNorm)
        XCTAssertEqual(bnNames.count, 20)
        for bn in bnNames {
            for key in ["running_mean", "running_var"] {
                let got = try XCTUnwrap(imported.checkpoint.state["\(bn).\(key)"]).data
                let want = try XCTUnwrap(expected["\(bn).\(key)"], "\(bn).\(key)").data
                let error = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(error, 1e-4, "\(bn).\(key): max abs error \(error)")
            }
        }
    }

    /// The rebuilt BatchNorms (gamma = sqrt(var + eps), beta = b' + mean, statistics) and fc equal the ones the
    /// fixture script rebuilt in PyTorch, whose train-mode forward on the batch reproduces the folded logits.
    func testRebuiltStateMatchesPyTorchRebuild() throws {
        let (imported, expected) = try calibratedImport()
        var compared = 0
        let convWeights = Set(imported.checkpoint.architecture.namedConvolutions.map { "\($0.conv).weight" })
        for (name, tensor) in imported.checkpoint.state where !name.hasSuffix("num_batches_tracked") && !convWeights.contains(name) {
            let want = try XCTUnwrap(expected["rebuilt/\(name)"], name)
            XCTAssertEqual(tensor.shape, want.shape, name)
            XCTAssertLessThan(relativeError(tensor.data, want.data), 1e-4, name)
            compared += 1
        }
        XCTAssertEqual(compared, 20 * 4 + 2)
        XCTAssertTrue(imported.notes.joined().contains("4 calibration images of 64x64"), imported.notes.joined())
        let trainLogits = try XCTUnwrap(expected["train/rebuilt/logits"]).data
        let evalLogits = try XCTUnwrap(expected["eval/folded/logits"]).data
        XCTAssertLessThan(relativeError(trainLogits, evalLogits), 1e-5)
    }

    /// Eval logits of the rebuilt model equal ONNX Runtime's for the folded file, on the calibration batch
    /// and on another input.
    func testRebuiltModelKeepsEvalFunction() throws {
        let (imported, expected) = try calibratedImport()
        let plan = try InferencePlan(architecture: imported.checkpoint.architecture, state: imported.checkpoint.state)
        let batch = nhwc(fromNCHW: try ONNXFixtures.floats("calib_4x3x64x64.f32"), batch: 4, channels: 3, height: 64, width: 64)
        let onCalibration = plan.run(images: batch, count: 4, height: 64, width: 64)
        XCTAssertLessThan(relativeError(onCalibration, try XCTUnwrap(expected["eval/folded/logits"]).data), 1e-4)
        XCTAssertLessThan(relativeError(try ONNXFixtures.logits(imported.checkpoint), try ONNXFixtures.floats("ts_folded.logits.f32")), 1e-4)
    }

    /// Without images the statistics come from synthetic inputs: still the file's eval function, and
    /// variances of the data's order rather than placeholders.
    func testDefaultCalibrationIsSyntheticAndSound() throws {
        let imported = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_folded.onnx"), options: ImportOptions())
        let variance = try XCTUnwrap(imported.checkpoint.state["layer1.0.bn1.running_var"]).data
        XCTAssertTrue(variance.allSatisfy { $0 > 1e-4 && $0.isFinite }, "\(variance)")
        XCTAssertNotEqual(variance, [Float](repeating: 1 - 1e-5, count: variance.count))
        let gamma = try XCTUnwrap(imported.checkpoint.state["layer1.0.bn1.weight"]).data
        for (g, v) in zip(gamma, variance) { XCTAssertEqual(g, (v + 1e-5).squareRoot(), accuracy: 1e-6) }
        XCTAssertLessThan(relativeError(try ONNXFixtures.logits(imported.checkpoint), try ONNXFixtures.floats("ts_folded.logits.f32")), 1e-4)
    }
}
