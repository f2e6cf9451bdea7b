import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
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
///
/// `testOneStepFromPretrainedFoldedImportBehavesLikeTheOriginal` uses a variant where the original's running
/// statistics describe the calibration data (`ts_folded_pretrained.onnx`): there the claim is asserted against
/// PyTorch's original.
final class FoldedImportTrainingTests: XCTestCase {
    static let count = 4, side = 64

    struct Fixture {
        var batch: [Float]
        var labels: [Int]
        var expected: [String: SafeTensors.Entry]
        var imported: ImportedModel
        var original: StateDict
        var count = FoldedImportTrainingTests.count
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
        let logits = model.forward(images: f.batch, count: f.count, height: Self.side, width: Self.side, training: true)
        let loss = model.backward(labels: f.labels)
        optimizer.step()
        _ = model.forward(images: f.batch, count: f.count, height: Self.side, width: Self.side, training: true)
        let lossAfterStep = model.backward(labels: f.labels)
        return Step(logits: logits, loss: loss, lossAfterStep: lossAfterStep)
    }

    func relative(_ a: Float, _ b: Float) -> Float { abs(a - b) / abs(b) }

    func reference(_ f: Fixture, _ name: String) throws -> [Float] {
        try XCTUnwrap(f.expected[name], "\(name) missing from the expected safetensors").data
    }

    func testOneStepFromFoldedImportMatchesPyTorchRebuildAndKeepsTheFunction() throws {
        let f = try fixture()
        let folded = try oneStep(f.imported.checkpoint.state, f)
        let original = try oneStep(f.original, f)

        // (a) The import's train-mode forward is PyTorch's train-mode forward of the rebuilt model…
        let logitError = relativeError(folded.logits, try reference(f, "train/rebuilt/logits"))
        let lossError = relative(folded.loss, try reference(f, "train/rebuilt/loss")[0])
        XCTAssertLessThan(logitError, 1e-5, "train-mode logits vs PyTorch rebuilt")
        XCTAssertLessThan(lossError, 1e-5, "train-mode loss vs PyTorch rebuilt")
        // … and equals the folded file's eval function: same function in both modes.
        let evalError = relativeError(folded.logits, try reference(f, "eval/folded/logits"))
        XCTAssertLessThan(evalError, 1e-5, "train-mode logits vs ONNX Runtime eval logits of the folded file")

        // The original's side through the same engine is PyTorch's original (engine check for the comparison below).
        let originalLogitError = relativeError(original.logits, try reference(f, "train/original/logits"))
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
        let toOriginal = relativeError(folded.logits, original.logits)
        print("""
            folded import: logits vs PyTorch rebuilt \(logitError), loss \(lossError), vs folded eval \(evalError); \
            original: logits \(originalLogitError), loss \(originalLossError); \(stepErrors)
            folded vs original: train logits rel. \(toOriginal), loss \(folded.loss) vs \(original.loss), \
            after one step \(folded.lossAfterStep) vs \(original.lossAfterStep)
            """)
    }

    /// The calibrated import with every BatchNorm replaced by placeholders: running_mean 0, running_var 1,
    /// weight 1, bias = the folded conv bias b' (the calibrated bias is b' + mean).
    func naiveRebuild(_ checkpoint: Checkpoint) throws -> StateDict {
        var naive = checkpoint.state
        for bn in checkpoint.architecture.namedConvolutions.map(\.batchNorm) {
            let mean = try XCTUnwrap(naive["\(bn).running_mean"]), bias = try XCTUnwrap(naive["\(bn).bias"])
            let convBias = zip(bias.data, mean.data).map { $0 - $1 }
            naive["\(bn).bias"] = Tensor(shape: bias.shape, data: convBias)
            naive["\(bn).weight"] = Tensor(repeating: 1, shape: bias.shape)
            naive["\(bn).running_mean"] = Tensor(repeating: 0, shape: bias.shape)
            naive["\(bn).running_var"] = Tensor(repeating: 1, shape: bias.shape)
        }
        return naive
    }

    /// Contrast: rebuilding with placeholders (running_mean 0, running_var 1, weight 1, bias = conv bias b')
    /// keeps the eval function but not the train-mode one, so the assertions above would fail for it.
    func testNaiveRebuildChangesTheTrainModeFunction() throws {
        let f = try fixture()
        let naive = try naiveRebuild(f.imported.checkpoint)
        let step = try oneStep(naive, f)
        let evalError = relativeError(step.logits, try reference(f, "eval/folded/logits"))
        let lossError = relative(step.loss, try reference(f, "train/rebuilt/loss")[0])
        let naiveStepError = relative(step.lossAfterStep, try reference(f, "step/naive/loss")[0])
        XCTAssertLessThan(naiveStepError, 1e-4, "naive post-step loss vs PyTorch (engine check)")
        print("naive rebuild: post-step loss vs PyTorch \(naiveStepError); train logits vs folded eval \(evalError), loss \(step.loss) (rebuilt \(try reference(f, "train/rebuilt/loss")[0])), after one step \(step.lossAfterStep)")
        XCTAssertGreaterThan(evalError, 0.5, "naive rebuild's train-mode logits should be far from the folded function")
        XCTAssertGreaterThan(lossError, 0.02, "naive rebuild's train-mode loss should differ from the rebuilt model's")
    }

    // MARK: - A "pretrained" original (running statistics = statistics of X2)

    /// `ts_folded_pretrained.onnx` (see fixtures/onnx/README.md): `ts_folded.onnx`'s original with every BatchNorm's
    /// running statistics set to its input's statistics over the 8-image batch X2 (mean, unbiased variance), as a
    /// trained model's describe its data, exported folded. Calibrated on X2.
    func pretrainedFixture() throws -> Fixture {
        let count = 8
        let batch = nhwc(fromNCHW: try ONNXFixtures.floats("calib_pretrained_8x3x64x64.f32"), batch: count, channels: 3,
                         height: Self.side, width: Self.side)
        let options = ImportOptions(calibration: CalibrationImages(pixels: batch, count: count, height: Self.side, width: Self.side))
        let imported = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_folded_pretrained.onnx"), options: options)
        let expected = try SafeTensors.read(path: ONNXFixtures.path("pretrained_expected.safetensors")).tensors
        var original: StateDict = [:]
        for (name, entry) in try SafeTensors.read(path: ONNXFixtures.path("ts_folded_pretrained_original.safetensors")).tensors {
            original[name] = Tensor(shape: entry.shape, data: entry.data)
        }
        let labels = try XCTUnwrap(expected["labels"]).data.map { Int($0) }
        XCTAssertEqual(labels, [4, 4, 0, 0, 3, 0, 3, 4])
        return Fixture(batch: batch, labels: labels, expected: expected, imported: imported, original: original, count: count)
    }

    /// When the original's running statistics describe the calibration data (as a pretrained model's do), one training
    /// step from the calibrated folded import behaves like one from the unfolded original (reference: PyTorch's original,
    /// `pretrained_expected.safetensors`), and a naive rebuild does not.
    ///
    /// Why it is close and not equal — measured (this engine and PyTorch agree):
    /// - Train-mode logits: 0.0533 relative to the original's (the tolerance 0.07 is a bit above). The import's
    ///   train-mode function is the folded eval function (checked: 1e-5), i.e. the original's eval function, which
    ///   normalises with the stored UNBIASED variance; the original in train mode uses the biased one, a factor
    ///   sqrt(n/(n−1)) per BatchNorm with n = 8·H·W: small in the stem (n = 8192) but 1.6% in layer4 (2×2 maps, n = 32),
    ///   compounded over the net. PyTorch's own gap original-train vs folded-eval is the same 0.0533 (asserted below),
    ///   so the import adds nothing to it.
    /// - Loss on X2: 1.8488 vs 1.8550, 0.34% relative (tolerance 0.6%).
    /// - After one AdamW step (lr 1e-3, wd 0.01): 1.1048 vs 0.8578, 28.8% relative (tolerance 35%). Both steps go
    ///   down, by 0.744 vs 0.997. The step is not invariant under the reparametrisation: Adam's first step moves every
    ///   parameter by about lr·sign(g), but the import's parameters are W' = W·γ/σ, γ' = σ_z, β' = b' + μ_z instead of
    ///   W, γ, β, so the same-size step is a different change of the function. Checked in PyTorch (not a fixture):
    ///   folding the same original with the BIASED variance instead makes the train-mode logits equal (2.6e-6) and
    ///   still gives 1.0860 vs 0.8578 after the step, so nearly all of the post-step gap is the parametrisation and
    ///   the variance convention adds only 1.0860 → 1.1048. "Behaves like" holds for the function and the loss, and
    ///   for the step's direction and rough size, not for its exact result.
    /// - Naive rebuild (running_mean 0, running_var 1, weight 1, bias b'): logits 1.10 relative to the original's,
    ///   loss 2.0387 (9.9%), after the step 1.3939 (62.5%): the asserted contrast is logits > 0.5 (vs 0.053) and loss
    ///   > 5% (vs 0.34%); its post-step loss is farther than the calibrated import's (asserted).
    func testOneStepFromPretrainedFoldedImportBehavesLikeTheOriginal() throws {
        let f = try pretrainedFixture()
        let folded = try oneStep(f.imported.checkpoint.state, f)
        let original = try oneStep(f.original, f)
        let pyLogits = try reference(f, "train/original/logits"), pyLoss = try reference(f, "train/original/loss")[0]
        let pyAfter = try reference(f, "step/original/loss")[0], evalLogits = try reference(f, "eval/folded/logits")

        // Engine check: the original through this engine is PyTorch's original (train forward and the step).
        let engineLogits = relativeError(original.logits, pyLogits)
        let engineLoss = relative(original.loss, pyLoss), engineAfter = relative(original.lossAfterStep, pyAfter)
        XCTAssertLessThan(engineLogits, 1e-5, "original train-mode logits vs PyTorch")
        XCTAssertLessThan(engineLoss, 1e-5, "original train-mode loss vs PyTorch")
        XCTAssertLessThan(engineAfter, 1e-4, "original post-step loss vs PyTorch")

        // The import keeps the folded function in train mode on X2.
        let evalError = relativeError(folded.logits, evalLogits)
        XCTAssertLessThan(evalError, 1e-5, "import's train-mode logits vs ONNX Runtime eval logits of the folded file")

        // The claim: against PyTorch's original.
        let logitError = relativeError(folded.logits, pyLogits)
        let lossError = relative(folded.loss, pyLoss)
        let stepError = relative(folded.lossAfterStep, pyAfter)
        XCTAssertLessThan(logitError, 0.07, "train-mode logits vs PyTorch's original")
        XCTAssertLessThan(lossError, 0.006, "train-mode loss vs PyTorch's original")
        XCTAssertLessThan(stepError, 0.35, "post-step loss vs PyTorch's original")
        XCTAssertLessThan(folded.lossAfterStep, folded.loss - 0.5, "the step lowers the loss, as the original's does")
        // The logit gap is PyTorch's own original-train vs original-eval gap (biased vs unbiased variance).
        let pyGap = relativeError(evalLogits, pyLogits)
        XCTAssertEqual(logitError, pyGap, accuracy: 1e-4, "gap to the original = PyTorch's train/eval gap of the original")

        // Contrast: the naive rebuild is far from the original.
        let naive = try naiveRebuild(f.imported.checkpoint)
        let naiveStep = try oneStep(naive, f)
        let naiveLogitError = relativeError(naiveStep.logits, pyLogits)
        let naiveLossError = relative(naiveStep.loss, pyLoss), naiveStepError = relative(naiveStep.lossAfterStep, pyAfter)
        XCTAssertGreaterThan(naiveLogitError, 0.5, "naive rebuild's train-mode logits should be far from the original's")
        XCTAssertGreaterThan(naiveLossError, 0.05, "naive rebuild's loss should be far from the original's")
        XCTAssertGreaterThan(naiveStepError, stepError, "naive post-step loss should be farther from the original's")

        print("""
            pretrained: engine vs PyTorch original: logits \(engineLogits), loss \(engineLoss), after step \(engineAfter); \
            import train vs folded eval \(evalError)
            import vs PyTorch original: logits \(logitError) (PyTorch train/eval gap \(pyGap)), loss \(folded.loss) vs \(pyLoss) \
            (\(lossError)), after one step \(folded.lossAfterStep) vs \(pyAfter) (\(stepError))
            naive vs PyTorch original: logits \(naiveLogitError), loss \(naiveStep.loss) (\(naiveLossError)), \
            after one step \(naiveStep.lossAfterStep) (\(naiveStepError))
            """)
    }
}
