import Foundation
import ResNetModel
import TestSupport
import XCTest

/// Finite-difference checks for what the PyTorch reference does not cover (the linear head, dropout on,
/// max-pool routing through the stem), the frozen-backbone shortcut, and the metrics against hand-computed values.
final class TrainingLayerTests: XCTestCase {
    /// A narrow random network (base width 4) on 3 images of 33x33: small enough for finite differences.
    func smallModel(head: HeadKind, dropout: Float) throws -> (TrainableResNet, [Float], [Int]) {
        let architecture = Architecture(ModelConfig(numClasses: 3, head: head, hiddenUnits: 8, dropout: dropout, baseWidth: 4))
        var rng = SplitMix64(seed: 7)
        let model = try TrainableResNet(architecture: architecture, state: ParameterInitialization.model(architecture, rng: &rng))
        let images = (0..<(3 * 33 * 33 * 3)).map { _ in rng.nextUnitFloat() * 2 - 1 }
        return (model, images, [0, 2, 1])
    }

    /// Loss with the dropout generator reset, so every evaluation draws the same masks.
    func loss(_ model: TrainableResNet, _ images: [Float], _ labels: [Int]) -> Float {
        model.rng = SplitMix64(seed: 99)
        _ = model.forward(images: images, count: 3, height: 33, width: 33, training: true)
        return model.backward(labels: labels)
    }

    /// Central differences on the 4 elements with the largest analytic gradient of each named parameter.
    func checkFiniteDifferences(_ model: TrainableResNet, _ images: [Float], _ labels: [Int], _ names: [String]) {
        _ = loss(model, images, labels)
        let analytic = model.gradients()
        for name in names {
            guard let parameter = model.parameter(named: name), let gradient = analytic[name] else { XCTFail(name); continue }
            let original = parameter.values
            let scale = gradient.map(abs).max()!
            XCTAssertGreaterThan(scale, 1e-4, "\(name) has a gradient worth checking")
            let top = gradient.indices.sorted { abs(gradient[$0]) > abs(gradient[$1]) }.prefix(4)
            for i in top {
                let h: Float = 1e-3
                var plus = original, minus = original
                plus[i] += h; minus[i] -= h
                parameter.setValues(plus)
                let up = loss(model, images, labels)
                parameter.setValues(minus)
                let down = loss(model, images, labels)
                parameter.setValues(original)
                let numeric = (up - down) / (2 * h)
                XCTAssertEqual(numeric, gradient[i], accuracy: 0.03 * scale, "\(name)[\(i)]")
            }
        }
    }

    func testLinearHeadAndStemGradientsMatchFiniteDifferences() throws {
        let (model, images, labels) = try smallModel(head: .linear, dropout: 0)
        checkFiniteDifferences(model, images, labels,
                               ["fc.weight", "fc.bias", "conv1.weight", "bn1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias"])
    }

    /// Every convolution tap by tap (33x33 input: layer4's maps are 3x3 and 2x2, the stride-2 ones start from
    /// odd sides), the stem included.
    func testTapwiseGradientsMatchFiniteDifferences() throws {
        let (model, images, labels) = try smallModel(head: .linear, dropout: 0)
        model.convolutionAlgorithm = .tapwise
        checkFiniteDifferences(model, images, labels,
                               ["conv1.weight", "bn1.bias", "layer1.1.conv2.weight", "layer2.0.conv1.weight",
                                "layer3.0.downsample.0.weight", "layer4.0.conv1.weight", "layer4.1.conv2.weight"])
    }

    func testMLPHeadWithDropoutGradientsMatchFiniteDifferences() throws {
        let (model, images, labels) = try smallModel(head: .mlp, dropout: 0.5)
        checkFiniteDifferences(model, images, labels, ["head.fc1.weight", "head.bn1.weight", "head.fc2.bias", "layer3.1.conv1.weight"])
    }

    /// Dropout is inverted: in training the kept features are scaled by 1/(1−p), so the logits change; in eval
    /// mode it is the identity, so two eval passes agree exactly.
    func testDropoutIsActiveOnlyInTraining() throws {
        let (model, images, _) = try smallModel(head: .mlp, dropout: 0.5)
        let evalA = model.forward(images: images, count: 3, height: 33, width: 33, training: false)
        let evalB = model.forward(images: images, count: 3, height: 33, width: 33, training: false)
        XCTAssertEqual(evalA, evalB)
        model.rng = SplitMix64(seed: 1)
        let trainA = model.forward(images: images, count: 3, height: 33, width: 33, training: true)
        model.rng = SplitMix64(seed: 2)
        let trainB = model.forward(images: images, count: 3, height: 33, width: 33, training: true)
        XCTAssertNotEqual(trainA, trainB, "different masks for different seeds")
    }

    /// A frozen backbone gets no gradients at all, and the head's gradients are what they are when everything
    /// trains (train-mode BatchNorm: the forward pass is the same function either way; the frozen 3x3
    /// convolutions may run as Winograd, so equal up to float rounding: 1e-5 measured, the gradient tolerance 1e-4).
    func testFrozenBackboneComputesOnlyHeadGradients() throws {
        let (model, images, labels) = try smallModel(head: .mlp, dropout: 0)
        _ = loss(model, images, labels)
        let all = model.gradients()
        model.setBackboneFrozen(true)
        _ = loss(model, images, labels)
        let head = model.gradients()
        XCTAssertEqual(Set(head.keys), Set(all.keys.filter(TrainableResNet.isHeadName)))
        XCTAssertEqual(head.count, 8)
        for (name, gradient) in head { XCTAssertLessThan(relativeError(gradient, all[name] ?? []), 1e-4, name) }
    }

    /// Eval mode uses the running statistics: the training engine's eval forward equals the fused inference plan.
    func testEvalForwardMatchesTheInferencePlan() throws {
        let (model, images, _) = try smallModel(head: .mlp, dropout: 0.5)
        let plan = try InferencePlan(architecture: model.architecture, state: model.stateDict())
        let expected = plan.run(images: images, count: 3, height: 33, width: 33)
        let got = model.forward(images: images, count: 3, height: 33, width: 33, training: false)
        XCTAssertLessThan(relativeError(got, expected), 1e-5)
    }

    func testClassificationMetricsMatchHandComputedValues() {
        // Predictions: 0, 1, 1, 0 for labels 0, 1, 0, 1.
        let logits: [Float] = [2, 0, 0, 1, 0, 3, 1, 0]
        let m = ClassificationMetrics(logits: logits, labels: [0, 1, 0, 1], classes: 2)
        XCTAssertEqual(m.confusion, [[1, 1], [1, 1]])
        XCTAssertEqual(m.accuracy, 0.5)
        XCTAssertEqual(m.precision, [0.5, 0.5])
        XCTAssertEqual(m.recall, [0.5, 0.5])
        // −log softmax: log(1+e^−2), log(1+e^−1), log(1+e^3)−… computed by hand per row.
        let expected = (log(1 + exp(-2.0)) + log(1 + exp(-1.0)) + (3 + log(1 + exp(-3.0))) + (1 + log(1 + exp(-1.0)))) / 4
        XCTAssertEqual(m.loss, expected, accuracy: 1e-12)
    }

    func testROCAUCAndAveragePrecisionMatchHandComputedValues() throws {
        // Scores with a tie between a positive and a negative at 0.5.
        let scores = [0.9, 0.5, 0.5, 0.2, 0.1], positive = [true, true, false, false, true]
        let curves = try XCTUnwrap(BinaryCurves(scores: scores, positive: positive))
        // Pairs (positive, negative) ranked right: (0.9>0.5) (0.9>0.2) (0.5=0.5: ½) (0.5>0.2) (0.1: none) → 3.5 of 6.
        XCTAssertEqual(curves.rocAUC, 3.5 / 6, accuracy: 1e-12)
        // Thresholds 0.9 (R 1/3, P 1), 0.5 (R 2/3, P 2/3), 0.2 (R 2/3), 0.1 (R 1, P 3/5).
        XCTAssertEqual(curves.averagePrecision, 1.0 / 3 * 1 + 1.0 / 3 * (2.0 / 3) + 1.0 / 3 * 0.6, accuracy: 1e-12)
        XCTAssertNil(BinaryCurves(scores: [0.1, 0.2], positive: [true, true]))
        // A diverged model scores NaN: no curve (its ties would never resolve), never a hang.
        XCTAssertNil(BinaryCurves(scores: [0.1, .nan, 0.3], positive: [true, false, true]))
    }

    func testOneCycleEndsAtTheFinalLearningRate() {
        let s = OneCycleSchedule(maxLR: 1e-2, totalSteps: 100)
        XCTAssertEqual(s.values(at: 0).lr, 1e-2 / 25, accuracy: 1e-15)
        XCTAssertEqual(s.values(at: 29).lr, 1e-2, accuracy: 1e-15)
        XCTAssertEqual(s.values(at: 29).beta1, 0.85, accuracy: 1e-15)
        XCTAssertEqual(s.values(at: 99).lr, 1e-2 / 25 / 1e4, accuracy: 1e-15)
        XCTAssertEqual(s.values(at: 99).beta1, 0.95, accuracy: 1e-15)
    }

    /// The small model with every convolution computed by a `RecordingConvolution`, in forward order (stem, then
    /// per block conv1, downsample if any, conv2).
    func recordingModel() throws -> (TrainableResNet, [Float], [Int], [RecordingConvolution]) {
        let (model, images, labels) = try smallModel(head: .linear, dropout: 0)
        var recorders: [RecordingConvolution] = []
        try model.setConvolutions { shape in
            let recorder = RecordingConvolution(shape)
            recorders.append(recorder)
            return recorder
        }
        return (model, images, labels, recorders)
    }

    /// The external convolutions learn which forwards no backward follows: the frozen prefix of the backbone
    /// in training, all of them in evaluation; and no backward ever follows a forward said to have none.
    func testForwardsTellWhetherABackwardFollows() throws {
        let (model, images, labels, recorders) = try recordingModel()
        func flags(training: Bool) -> [Bool] {
            for r in recorders { r.forBackward = [] }
            _ = model.forward(images: images, count: 3, height: 33, width: 33, training: training)
            if training { model.backward(labels: labels) }
            return recorders.map { recorder in
                XCTAssertEqual(recorder.forBackward.count, 1, "one forward per convolution")
                return recorder.forBackward.first ?? true
            }
        }
        XCTAssertEqual(flags(training: true), [Bool](repeating: true, count: 20), "everything trains")
        XCTAssertEqual(flags(training: false), [Bool](repeating: false, count: 20), "evaluation")
        model.setBackboneFrozen(true)
        XCTAssertEqual(flags(training: true), [Bool](repeating: false, count: 20), "head phase")
        // layer3 trains from its first block on: the stem, layer1 (4 convolutions) and layer2 (5) are the prefix.
        for p in model.parameters where p.name.hasPrefix("layer3.") || p.name.hasPrefix("layer4.") { p.requiresGrad = true }
        XCTAssertEqual(flags(training: true), [Bool](repeating: false, count: 10) + [Bool](repeating: true, count: 10), "from layer3")
    }

    /// `prepareConvolutions` hands every external convolution the input geometry its forward then sees (so a
    /// bf16 model's primitives are all built, and their failures reported, before training starts).
    func testPreparedGeometriesAreTheForwardOnes() throws {
        let (model, images, _, recorders) = try recordingModel()
        try model.prepareConvolutions(count: 3, height: 33, width: 33)
        _ = model.forward(images: images, count: 3, height: 33, width: 33, training: true)
        XCTAssertEqual(recorders.count, 20)
        for recorder in recorders {
            XCTAssertEqual(recorder.prepared.count, 1)
            XCTAssertEqual(recorder.prepared, recorder.used, "\(recorder.shape)")
        }
    }
}

/// An external convolution that computes nothing (its output is a constant) and records what it is asked: the
/// geometries prepared and used, and whether a backward follows each forward; a backward after a forward said to
/// have none fails the test.
final class RecordingConvolution: TrainingConvolution {
    let shape: ConvShape
    var prepared: [Geometry] = [], used: [Geometry] = [], forBackward: [Bool] = []
    init(_ shape: ConvShape) { self.shape = shape }
    func prepare(_ g: Geometry) { prepared.append(g) }
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, weight: UnsafePointer<Float>, weightUnchanged: Bool,
                 forBackward: Bool, _ y: UnsafeMutablePointer<Float>) {
        used.append(g)
        self.forBackward.append(forBackward)
        y.update(repeating: 0.5, count: g.output(of: shape).pixels * shape.outChannels)
    }
    func backward(_ dy: UnsafePointer<Float>, weightGradient: UnsafeMutablePointer<Float>?,
                  inputGradient: UnsafeMutablePointer<Float>?) {
        XCTAssertEqual(forBackward.last, true, "a backward after a forward without one")
    }
}
