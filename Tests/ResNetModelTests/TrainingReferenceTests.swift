import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// The trainer against PyTorch (`training_reference.safetensors`, see the reference README): the seed's
/// MLP head on the seeded ResNet-18, dropout 0, one batch of 16 images at 49x49.
final class TrainingReferenceTests: XCTestCase {
    static func fixture() throws -> TrainingReference { try TrainingReference.load() }

    func testStepZeroLogitsLossAndEveryGradientMatchPyTorch() throws {
        try checkStepZero(algorithm: .automatic)
    }

    /// im2col everywhere and taps everywhere (the stride-2 convolutions included), forward and backward, also
    /// give PyTorch's step 0. With taps, the stem's 147-term sums become 49 sums of 3 in another order, and
    /// that rounding flips a pre-ReLU value within about 1e-6 of zero, passing or blocking its whole gradient:
    /// bn1.bias is off by 1 %, so conv1 and bn1 are left to the finite-difference test
    /// (`TrainingLayerTests.testTapwiseGradientsMatchFiniteDifferences`).
    ///
    /// Taps also add each output's k·k partial sums one GEMM at a time, k·k more roundings of the running sum
    /// than one dot product. In train mode every BatchNorm divides by the batch's standard deviation, so those
    /// relative errors pass through the 19 layers of the longest path undamped and add up like a random walk:
    /// √19 · √(49 + 9·16) · u ≈ 3.5e-6 on top of the ≈ 5e-6 both implementations share with any float32 order.
    /// That does not fit under 1e-5 with certainty (OpenBLAS's generic kernel lands at 1.01e-5), so taps are held
    /// to 2e-5: the argument's sum, with room for the reference's own rounding.
    func testStepZeroMatchesPyTorchWithEachConvolutionAlgorithm() throws {
        try checkStepZero(algorithm: .im2col)
        try checkStepZero(algorithm: .tapwise, skipping: ["conv1.weight", "bn1.weight", "bn1.bias"], logitTolerance: 2e-5)
    }

    func checkStepZero(algorithm: ConvolutionAlgorithm, skipping: Set<String> = [], logitTolerance: Float = 1e-5) throws {
        let f = try Self.fixture()
        let model = try f.model()
        model.convolutionAlgorithm = algorithm
        let logits = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
        let loss = model.backward(labels: f.labels)
        let logitError = relativeError(logits, try f.tensor("step0/logits"))
        let lossError = abs(loss - (try f.tensor("step0/loss"))[0]) / abs(try f.tensor("step0/loss")[0])
        XCTAssertLessThan(logitError, logitTolerance, "logits (\(algorithm))")
        XCTAssertLessThan(lossError, 1e-5, "loss (\(algorithm))")
        let gradients = model.gradients()
        let referenceNames = f.tensors.keys.filter { $0.hasPrefix("step0/grad/") }
        XCTAssertEqual(referenceNames.count, model.parameters.count, "one reference gradient per parameter")
        var worst: (String, Float) = ("", 0)
        for name in referenceNames {
            let parameter = String(name.dropFirst("step0/grad/".count))
            if skipping.contains(parameter) { continue }
            guard let mine = gradients[parameter] else { XCTFail("no gradient for \(parameter)"); continue }
            let error = relativeError(mine, try f.tensor(name))
            XCTAssertLessThan(error, 1e-4, "\(parameter) (\(algorithm))")
            if error > worst.1 { worst = (parameter, error) }
        }
        print("step 0 (\(algorithm)): logits rel. error \(logitError), loss \(lossError), worst gradient \(worst.0) \(worst.1)")
    }

    func testOneCycleScheduleMatchesPyTorch() throws {
        let f = try Self.fixture()
        let schedule = OneCycleSchedule(maxLR: 1e-3, totalSteps: 10)
        let lr = try f.tensor("full/lr"), beta1 = try f.tensor("full/beta1")
        for step in 0..<10 {
            let (l, b) = schedule.values(at: step)
            XCTAssertEqual(Float(l), lr[step], accuracy: lr[step] * 1e-6 + 1e-12, "lr at step \(step)")
            XCTAssertEqual(Float(b), beta1[step], accuracy: 1e-6, "beta1 at step \(step)")
        }
    }

    /// Ten AdamW + OneCycleLR steps on the reference batch, compared step by step and at the end.
    ///
    /// Tolerances. Ten Adam steps on one batch are ill-conditioned: Adam divides each gradient by its own
    /// magnitude, so an element whose gradient is nearly zero moves by ±lr on rounding noise alone. Measured
    /// with `tools/train_reference_sensitivity.py`, PyTorch itself, rerun in float32 on this machine, is off
    /// its own reference by (head_trainbn) 3.7e-5 max-abs on head.fc1.weight, and by 8.4e-4 when the input is
    /// perturbed by 1e-6 relative; for the whole model by 0.96 % on the losses and 7.1 % on the final tensors.
    /// So the losses and the bulk of each tensor (relative L2 error) are held to 1e-4, while the max-abs error,
    /// dominated by a few such elements, is held to the spread PyTorch shows against itself.
    /// `exactLossSteps` losses are held to 1e-4, later ones to `laterLossTolerance`.
    func checkTrajectory(_ prefix: String, freezeBackbone: Bool, frozenBatchNorm: FrozenBatchNormMode,
                         exactLossSteps: Int, laterLossTolerance: Float,
                         finalMaxTolerance: Float, finalL2Tolerance: Float) throws {
        let f = try Self.fixture()
        let model = try f.model()
        model.setBackboneFrozen(freezeBackbone)
        model.frozenBatchNorm = frozenBatchNorm
        let optimizer = AdamW(parameters: model.parameters, lr: 1e-3, weightDecay: 0.05)
        let schedule = OneCycleSchedule(maxLR: 1e-3, totalSteps: 10)
        let losses = try f.tensor("\(prefix)/losses")
        var lossErrors: [Float] = []
        for step in 0..<10 {
            (optimizer.lr, optimizer.beta1) = schedule.values(at: step)
            _ = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
            let loss = model.backward(labels: f.labels)
            let error = abs(loss - losses[step]) / abs(losses[step])
            lossErrors.append(error)
            XCTAssertLessThan(error, step < exactLossSteps ? 1e-4 : laterLossTolerance, "\(prefix) loss at step \(step)")
            optimizer.step()
        }
        let state = model.stateDict()
        var worstMax: (String, Float) = ("", 0), worstL2: (String, Float) = ("", 0)
        let finals = f.tensors.keys.filter { $0.hasPrefix("\(prefix)/final/") }
        XCTAssertGreaterThan(finals.count, 20)
        for name in finals {
            let key = String(name.dropFirst("\(prefix)/final/".count))
            guard let mine = state[key] else { XCTFail("\(key) missing from the state dict"); continue }
            let reference = try f.tensor(name)
            let maxError = relativeError(mine.data, reference), l2 = l2RelativeError(mine.data, reference)
            XCTAssertLessThan(maxError, finalMaxTolerance, "\(prefix) final \(key) (max-abs)")
            XCTAssertLessThan(l2, finalL2Tolerance, "\(prefix) final \(key) (L2)")
            if maxError > worstMax.1 { worstMax = (key, maxError) }
            if l2 > worstL2.1 { worstL2 = (key, l2) }
        }
        print("\(prefix): loss rel. errors \(lossErrors); worst final max-abs \(worstMax), worst L2 \(worstL2)")
    }

    /// Chaotic after two steps: a rounding-level difference grows several-fold per step, so no float32 order
    /// other than the reference machine's own can be held to 1e-4 here. The bounds are the spread measured
    /// across OpenBLAS kernels (`tools/kernel_spread.sh`, figures in docs/numerics.md) and PyTorch's own float32
    /// rerun against its reference, with about 2x room: losses 2e-2, final tensors 0.25 max-abs, 0.08 L2.
    func testWholeModelTrajectoryMatchesPyTorch() throws {
        try checkTrajectory("full", freezeBackbone: false, frozenBatchNorm: .train, exactLossSteps: 2,
                            laterLossTolerance: 2e-2, finalMaxTolerance: 0.25, finalL2Tolerance: 0.08)
    }

    func testFrozenBackboneTrainModeBatchNormTrajectoryMatchesPyTorch() throws {
        try checkTrajectory("head_trainbn", freezeBackbone: true, frozenBatchNorm: .train, exactLossSteps: 10,
                            laterLossTolerance: 1e-4, finalMaxTolerance: 2e-3, finalL2Tolerance: 1e-4)
    }

    func testFrozenBackboneEvalModeBatchNormTrajectoryMatchesPyTorch() throws {
        try checkTrajectory("head_evalbn", freezeBackbone: true, frozenBatchNorm: .eval, exactLossSteps: 10,
                            laterLossTolerance: 1e-4, finalMaxTolerance: 2e-3, finalL2Tolerance: 1e-4)
    }
}

/// ‖a − b‖₂ / ‖b‖₂: the bulk error of a tensor, insensitive to a few outlying elements.
func l2RelativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var diff: Double = 0, norm: Double = 0
    for i in 0..<a.count {
        diff += Double(a[i] - b[i]) * Double(a[i] - b[i])
        norm += Double(b[i]) * Double(b[i])
    }
    return Float((diff / max(norm, 1e-300)).squareRoot())
}
