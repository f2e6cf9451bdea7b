import Foundation
import ResNetFormats
import ResNetModel
import XCTest

/// One training step from the calibrated import of `ts_folded.onnx`, against PyTorch
/// (`fixtures/onnx/calibration_expected.safetensors`, see fixtures/onnx/README.md) and against the same step
/// from the unfolded original (`ts_folded_original.safetensors`) run through the same engine.
///
/// What holds, and is asserted: the import's train-mode forward on the calibration batch X is PyTorch's
/// train-mode forward of the rebuilt model and equals the folded file's eval function (the network computes
/// the same function in both modes); one AdamW step from it matches PyTorch's step from the rebuilt model.
/// A naive rebuild (mean 0, var 1, weight 1, bias b') does not keep the function in train mode.
///
/// What does NOT hold on this fixture, and is only measured (printed; PyTorch values in step/<model>/loss): closeness to the original's
/// train-mode logits / post-step loss. The original's random running statistics are not X's batch
/// statistics, so its train-mode function on X differs from its eval function (= the folded function);
/// the rebuild can only reproduce the latter. Measured (PyTorch and this engine agree): train-mode logits
/// differ by 0.79 relative, losses 1.6457 (original) vs 1.6021 (rebuilt); after one AdamW step (lr 1e-3)
/// 0.6173 vs 1.5849 — the naive rebuild's post-step loss (0.5795) is closer to the original's than the
/// calibrated rebuild's.
final class FoldedImportTrainingTests: XCTestCase {
    static let count = 4, side = 64

    struct Fixture {
        var batch: [Float]
        var labels: [Int]
        var expected: [String: SafeTensors.Entry]
        var imported: ImportedModel
        var original: StateDict
    }

    func fixture() throws -> Fixture {
        let batch = nhwc(fromNCHW: try ONNXFixtures.floats("calib_4x3x64x64.f32"), batch: Self.count, channels: 3,
                         height: Self.side, width: Self.side)
        let options = ImportOptions(calibration: CalibrationImages(pixels: batch, count: Self.count, height: Self.side, width: Self.side))
        let imported = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_folded.onnx"), options: options)
        let expected = try SafeTensors.read(path: ONNXFixtures.path("calibration_expected.safetensors")).tensors
        var original: StateDict = [:]
        for (name, entry) in try SafeTensors.read(path: ONNXFixtures.path("ts_folded_original.safetensors")).tensors {
            original[name] = Tensor(shape: entry.shape, data: entry.data)
        }
        let labels = try XCTUnwrap(expected["labels"]).data.map { Int($0) }
        XCTAssertEqual(labels, [0, 3, 1, 4])
        return Fixture(batch: batch, labels: labels, expected: expected, imported: imported, original: original)
    }

    struct Step {
        var logits: [Float]
        var loss: Float
        var lossAfterStep: Float
    }

    /// Train-mode forward + cross-entropy, one AdamW step (lr 1e-3, PyTorch's defaults otherwise), train-mode forward.
    func oneStep(_ state: StateDict, _ f: Fixture) throws -> Step {
        let model = try TrainableResNet(architecture: f.imported.checkpoint.architecture, state: state)
        let optimizer = AdamW(parameters: model.parameters, lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weightDecay: 0.01)
        let logits = model.forward(images: f.batch, count: Self.count, height: Self.side, width: Self.side, training: true)
        let loss = model.backward(labels: f.labels)
        optimizer.step()
        _ = model.forward(images: f.batch, count: Self.count, height: Self.side, width: Self.side, training: true)
        let lossAfterStep = model.backward(labels: f.labels)
        return Step(logits: logits, loss: loss, lossAfterStep: lossAfterStep)
    }

    func relative(_ a: Float, _ b: Float) -> Float { abs(a - b) / abs(b) }

    func reference(_ f: Fixture, _ name: String) throws -> [Float] {
        try XCTUnwrap(f.expected[name], "\(name) missing from calibration_expected.safetensors").data
    }

    func testOneStepFromFoldedImportMatchesPyTorchRebuildAndKeepsTheFunction() throws {
        let f = try fixture()
        let folded = try oneStep(f.imported.checkpoint.state, f)
        let original = try oneStep(f.original, f)

        // (a) The import's train-mode forward is PyTorch's train-mode forward of the rebuilt model…
        let logitError = ONNXFixtures.relativeError(folded.logits, try reference(f, "train/rebuilt/logits"))
        let lossError = relative(folded.loss, try reference(f, "train/rebuilt/loss")[0])
        XCTAssertLessThan(logitError, 1e-5, "train-mode logits vs PyTorch rebuilt")
        XCTAssertLessThan(lossError, 1e-5, "train-mode loss vs PyTorch rebuilt")
        // … and equals the folded file's eval function: same function in both modes.
        let evalError = ONNXFixtures.relativeError(folded.logits, try reference(f, "eval/folded/logits"))
        XCTAssertLessThan(evalError, 1e-5, "train-mode logits vs ONNX Runtime eval logits of the folded file")

        // The original's side through the same engine is PyTorch's original (engine check for the comparison below).
        let originalLogitError = ONNXFixtures.relativeError(original.logits, try reference(f, "train/original/logits"))
        let originalLossError = relative(original.loss, try reference(f, "train/original/loss")[0])
        XCTAssertLessThan(originalLogitError, 1e-5, "original train-mode logits vs PyTorch")
        XCTAssertLessThan(originalLossError, 1e-5, "original train-mode loss vs PyTorch")

        // One AdamW step: against PyTorch's step from the same models (step/<model>/loss).
        let rebuiltAfter = try reference(f, "step/rebuilt/loss")[0], originalAfter = try reference(f, "step/original/loss")[0]
        let foldedStepError = relative(folded.lossAfterStep, rebuiltAfter)
        let originalStepError = relative(original.lossAfterStep, originalAfter)
        XCTAssertLessThan(foldedStepError, 1e-4, "post-step loss from the folded import vs PyTorch's rebuilt")
        XCTAssertLessThan(originalStepError, 1e-4, "post-step loss from the original vs PyTorch's original")
        let stepErrors = "post-step loss vs PyTorch: folded \(foldedStepError), original \(originalStepError)"

        // Measured only (see the type's comment): distance to the unfolded original.
        let toOriginal = ONNXFixtures.relativeError(folded.logits, original.logits)
        print("""
            folded import: logits vs PyTorch rebuilt \(logitError), loss \(lossError), vs folded eval \(evalError); \
            original: logits \(originalLogitError), loss \(originalLossError); \(stepErrors)
            folded vs original: train logits rel. \(toOriginal), loss \(folded.loss) vs \(original.loss), \
            after one step \(folded.lossAfterStep) vs \(original.lossAfterStep)
            """)
    }

    /// Contrast: rebuilding with placeholders (running_mean 0, running_var 1, weight 1, bias = conv bias b')
    /// keeps the eval function but not the train-mode one, so the assertions above would fail for it.
    func testNaiveRebuildChangesTheTrainModeFunction() throws {
        let f = try fixture()
        var naive = f.imported.checkpoint.state
        for bn in f.imported.checkpoint.architecture.namedConvolutions.map(\.batchNorm) {
            let mean = try XCTUnwrap(naive["\(bn).running_mean"]), bias = try XCTUnwrap(naive["\(bn).bias"])
            let convBias = zip(bias.data, mean.data).map { $0 - $1 }  // calibrated bias = b' + mean
            naive["\(bn).bias"] = Tensor(shape: bias.shape, data: convBias)
            naive["\(bn).weight"] = Tensor(shape: bias.shape, data: [Float](repeating: 1, count: convBias.count))
            naive["\(bn).running_mean"] = Tensor(shape: bias.shape, data: [Float](repeating: 0, count: convBias.count))
            naive["\(bn).running_var"] = Tensor(shape: bias.shape, data: [Float](repeating: 1, count: convBias.count))
        }
        let step = try oneStep(naive, f)
        let evalError = ONNXFixtures.relativeError(step.logits, try reference(f, "eval/folded/logits"))
        let lossError = relative(step.loss, try reference(f, "train/rebuilt/loss")[0])
        let naiveStepError = relative(step.lossAfterStep, try reference(f, "step/naive/loss")[0])
        XCTAssertLessThan(naiveStepError, 1e-4, "naive post-step loss vs PyTorch (engine check)")
        print("naive rebuild: post-step loss vs PyTorch \(naiveStepError); train logits vs folded eval \(evalError), loss \(step.loss) (rebuilt \(try reference(f, "train/rebuilt/loss")[0])), after one step \(step.lossAfterStep)")
        XCTAssertGreaterThan(evalError, 0.5, "naive rebuild's train-mode logits should be far from the folded function")
        XCTAssertGreaterThan(lossError, 0.02, "naive rebuild's train-mode loss should differ from the rebuilt model's")
    }
}
