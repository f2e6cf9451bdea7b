@testable import ResNetDNNL
import ResNetFormats
@testable import ResNetModel
import TestSupport
import XCTest

/// bf16 mixed-precision training against PyTorch's fp32 step 0 (`training_reference.safetensors`: the seed's MLP
/// head on the seeded ResNet-18, dropout 0, one batch of 16 images at 49x49), as `TrainingReferenceTests` loads it.
final class BF16TrainingTests: XCTestCase {
    static func fixture() throws -> TrainingReference { try TrainingReference.load() }

    /// Each kind of ResNet-18 convolution through oneDNN's bf16 against the same arithmetic emulated on the fp32
    /// engine (x, W and dy rounded to bf16, products summed in fp32): forward, dx and dW agree to fp32 summation
    /// order, and differ from plain fp32 by bf16's rounding. So does the forward no backward follows
    /// (`BF16ForwardPlan`, or by taps with the weight packed), and the forward and backward after it.
    func testConvolutionMatchesEmulatedBF16() throws {
        try BF16Training.checkCPU()
        var rng = SplitMix64(seed: 7)
        func random(_ count: Int) -> [Float] { (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 } }
        let cases: [(ConvShape, Geometry)] = [
            (ConvShape(3, 64, kernel: 7, stride: 2, padding: 3), Geometry(batch: 3, height: 49, width: 49)),
            (ConvShape(64, 64, kernel: 3, stride: 1, padding: 1), Geometry(batch: 4, height: 13, width: 13)),
            (ConvShape(64, 128, kernel: 3, stride: 2, padding: 1), Geometry(batch: 4, height: 13, width: 13)),
            (ConvShape(64, 128, kernel: 1, stride: 2, padding: 0), Geometry(batch: 4, height: 13, width: 13)),
            (ConvShape(32, 16, kernel: 3, stride: 2, padding: 0, samePadding: true), Geometry(batch: 2, height: 10, width: 9)),
            // Deep layers (weight larger than the output): the backward split by output channels, odd batch.
            (ConvShape(128, 128, kernel: 3, stride: 1, padding: 1), Geometry(batch: 3, height: 4, width: 4)),
            // Deep layers on at most 4 output pixels: backward-weights as one matmul per (pixel, tap) pair.
            (ConvShape(64, 64, kernel: 3, stride: 1, padding: 1), Geometry(batch: 3, height: 2, width: 2)),
            (ConvShape(64, 64, kernel: 3, stride: 2, padding: 1), Geometry(batch: 4, height: 3, width: 3)),
            (ConvShape(64, 128, kernel: 3, stride: 2, padding: 0, samePadding: true), Geometry(batch: 2, height: 4, width: 3)),
            // layer4 at 96x96 (3x3 maps, by taps too) and a 3x2 output from a stride-2 layer.
            (ConvShape(32, 48, kernel: 3, stride: 1, padding: 1), Geometry(batch: 3, height: 3, width: 3)),
            (ConvShape(32, 48, kernel: 3, stride: 2, padding: 1), Geometry(batch: 2, height: 6, width: 3)),
            // layer4's downsampling: a 1x1 at stride 2 reads 4 of 16 input pixels, the others' dx is zero.
            (ConvShape(32, 48, kernel: 1, stride: 2, padding: 0), Geometry(batch: 3, height: 4, width: 4)),
            // Windows covering the whole input: layer4 at 2x2 from 49x49 crops (convolutions), and single output
            // pixels (dense layers; oneDNN's own bf16 backward-weights returns garbage on a 2x1 input at stride 2):
            // odd batches, uneven channel splits, symmetric and 'same' padding.
            (ConvShape(64, 32, kernel: 3, stride: 1, padding: 1), Geometry(batch: 5, height: 2, width: 2)),
            (ConvShape(32, 64, kernel: 3, stride: 2, padding: 1), Geometry(batch: 3, height: 2, width: 2)),
            (ConvShape(16, 33, kernel: 3, stride: 1, padding: 1), Geometry(batch: 3, height: 1, width: 2)),
            (ConvShape(16, 24, kernel: 3, stride: 2, padding: 0, samePadding: true), Geometry(batch: 2, height: 2, width: 1)),
            (ConvShape(16, 24, kernel: 3, stride: 2, padding: 0, samePadding: true), Geometry(batch: 1, height: 2, width: 1)),
            (ConvShape(16, 24, kernel: 3, stride: 2, padding: 1), Geometry(batch: 2, height: 2, width: 1)),
            (ConvShape(16, 32, kernel: 3, stride: 2, padding: 0, samePadding: true), Geometry(batch: 2, height: 2, width: 1)),
            (ConvShape(16, 24, kernel: 3, stride: 2, padding: 0, samePadding: true), Geometry(batch: 2, height: 2, width: 2)),
        ]
        for (shape, g) in cases {
            let out = g.output(of: shape)
            let x = random(g.pixels * shape.inChannels), w = random(shape.outChannels * shape.patchSize)
            let dy = random(out.pixels * shape.outChannels)
            func forward(_ conv: any TrainingConvolution, weightUnchanged: Bool, forBackward: Bool) -> [Float] {
                runForward(conv, shape, g, x: x, w: w, weightUnchanged: weightUnchanged, forBackward: forBackward)
            }
            func backward(_ conv: any TrainingConvolution) -> (dx: [Float], dw: [Float]) {
                // NaN-filled: every gradient must be written, not added to (nor left alone, as an unread input's dx).
                var dx = [Float](repeating: .nan, count: x.count), dw = [Float](repeating: .nan, count: w.count)
                dy.withUnsafeBufferPointer { d in
                    dx.withUnsafeMutableBufferPointer { dxp in
                        dw.withUnsafeMutableBufferPointer { conv.backward(d.baseAddress!, weightGradient: $0.baseAddress!, inputGradient: dxp.baseAddress!) }
                    }
                }
                return (dx, dw)
            }
            func run(_ conv: any TrainingConvolution) -> (y: [Float], dx: [Float], dw: [Float]) {
                let y = forward(conv, weightUnchanged: false, forBackward: true)
                let (dx, dw) = backward(conv)
                return (y, dx, dw)
            }
            let conv = try BF16Training.convolutions(shape)
            let got = run(conv), emulated = run(EmulatedBF16Convolution(shape))
            let fp32 = run(EmulatedBF16Convolution(shape, rounding: false))
            let what = "\(shape.kernel)x\(shape.kernel)/\(shape.stride) \(shape.inChannels)→\(shape.outChannels) on \(g.batch)x\(g.height)x\(g.width)"
            for (name, a, b, c) in [("y", got.y, emulated.y, fp32.y), ("dx", got.dx, emulated.dx, fp32.dx), ("dW", got.dw, emulated.dw, fp32.dw)] {
                XCTAssertLessThan(relativeError(a, b), 1e-5, "\(what) \(name) against emulated bf16")
                XCTAssertGreaterThan(relativeError(a, c), 5e-4, "\(what) \(name): as exact as fp32, bf16 did not run")
                XCTAssertLessThan(relativeError(a, c), 2e-2, "\(what) \(name) against fp32")
            }
            // Forward only: the weight once as changed, then unchanged.
            for (index, unchanged) in [false, true].enumerated() {
                let y = forward(conv, weightUnchanged: unchanged, forBackward: false)
                XCTAssertLessThan(relativeError(y, emulated.y), 1e-5, "\(what) forward only, call \(index)")
            }
            // And a forward for backward after them, with the weight still unchanged.
            XCTAssertLessThan(relativeError(forward(conv, weightUnchanged: true, forBackward: true), emulated.y), 1e-5, "\(what) y after")
            let again = backward(conv)
            XCTAssertLessThan(relativeError(again.dx, emulated.dx), 1e-5, "\(what) dx after forward only")
            XCTAssertLessThan(relativeError(again.dw, emulated.dw), 1e-5, "\(what) dW after forward only")
        }
    }

    /// The forward no backward follows as Winograd F(2x2, 3x3) with fp32 output (forced here on even and odd
    /// maps): within bf16's error of fp32 and of direct bf16 (the transformed input is rounded to bf16 once
    /// more), NaN-filled outputs all written; and where the rule runs it (`WinogradBF16.paysInTraining`).
    func testForwardOnlyWinograd() throws {
        try BF16Training.checkCPU()
        var rng = SplitMix64(seed: 11)
        func random(_ count: Int) -> [Float] { (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 } }
        for (shape, g) in [(ConvShape(64, 64, kernel: 3, stride: 1, padding: 1), Geometry(batch: 3, height: 8, width: 8)),
                           (ConvShape(32, 48, kernel: 3, stride: 1, padding: 1), Geometry(batch: 2, height: 7, width: 5))] {
            let x = random(g.pixels * shape.inChannels), w = random(shape.outChannels * shape.patchSize)
            func forward(_ conv: any TrainingConvolution, forBackward: Bool) -> [Float] {
                runForward(conv, shape, g, x: x, w: w, forBackward: forBackward)
            }
            let winograd = BF16TrainingConvolution(shape, workSaving: true)
            let y = forward(winograd, forBackward: false)
            XCTAssertEqual((try winograd.forwardPlan(g) as? BF16ForwardPlan)?.usesWinograd, true)
            let fp32 = forward(EmulatedBF16Convolution(shape, rounding: false), forBackward: true)
            let direct = forward(BF16TrainingConvolution(shape, workSaving: false), forBackward: false)
            let what = "3x3/1 \(shape.inChannels)→\(shape.outChannels) on \(g.batch)x\(g.height)x\(g.width)"
            XCTAssertLessThan(relativeError(y, fp32), 2e-2, "\(what) against fp32")
            XCTAssertGreaterThan(relativeError(y, fp32), 5e-4, "\(what): as exact as fp32, bf16 did not run")
            XCTAssertLessThan(relativeError(y, direct), 2e-2, "\(what) against direct bf16")
            XCTAssertNotEqual(y, direct, "\(what): Winograd did not run")
        }
        XCTAssertTrue(try BF16TrainingConvolution(ConvShape(64, 64, kernel: 3, stride: 1, padding: 1), workSaving: true)
            .describe(Geometry(batch: 4, height: 8, width: 8)).contains("forward only winograd + "))
        // The rule: layer1 at 96x96 with 8 images a lane (1152 tiles) yes; 13x13 maps (odd: tiles past the edge)
        // and 4x4 maps with 32 tiles no, 4x4 with 128 tiles yes.
        let layer1 = ConvShape(64, 64, kernel: 3, stride: 1, padding: 1), layer3 = ConvShape(256, 256, kernel: 3, stride: 1, padding: 1)
        XCTAssertTrue(WinogradBF16.paysInTraining(layer1, laneInput: Geometry(batch: 8, height: 24, width: 24)))
        XCTAssertFalse(WinogradBF16.paysInTraining(layer1, laneInput: Geometry(batch: 8, height: 13, width: 13)))
        XCTAssertFalse(WinogradBF16.paysInTraining(layer3, laneInput: Geometry(batch: 8, height: 4, width: 4)))
        XCTAssertTrue(WinogradBF16.paysInTraining(layer3, laneInput: Geometry(batch: 32, height: 4, width: 4)))
    }

    /// Forward-only Winograd layers keep V and M in their lane's workspace (`TrainingLanes.workspace`), one for all
    /// layers: a larger layer run in between (the workspace may grow and move) leaves a smaller one's output as it was.
    func testForwardOnlyWinogradLayersShareTheLaneWorkspace() throws {
        try BF16Training.checkCPU()
        var rng = SplitMix64(seed: 12)
        func layer(_ shape: ConvShape, _ g: Geometry) -> () -> [Float] {
            let conv = BF16TrainingConvolution(shape, workSaving: true)
            let x = (0..<(g.pixels * shape.inChannels)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let w = (0..<(shape.outChannels * shape.patchSize)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            return { runForward(conv, shape, g, x: x, w: w, weightUnchanged: true, forBackward: false) }
        }
        let small = layer(ConvShape(32, 32, kernel: 3, stride: 1, padding: 1), Geometry(batch: 2, height: 6, width: 6))
        let large = layer(ConvShape(64, 96, kernel: 3, stride: 1, padding: 1), Geometry(batch: 4, height: 20, width: 20))
        let first = small()
        XCTAssertFalse(first.contains { $0.isNaN })
        let largeFirst = large()
        XCTAssertEqual(small(), first)
        XCTAssertEqual(large(), largeFirst)
    }

    /// Step 0 against PyTorch's fp32 reference. bf16 keeps 8 significant bits, and train-mode BatchNorm on this
    /// fixture (16 images, random weights, layer4 at 2x2) amplifies that rounding: PyTorch's own bf16 autocast
    /// lands at 7.4e-2 on the logits, a median 0.38 and a worst 0.60 over the gradients (relative to each
    /// tensor's largest; `tools/bf16_autocast_step0.py`). The 3e-2 is out of reach for bf16 here
    /// (`testStepZeroGradientsMoveWithTheForwardsRounding` shows why); held instead to be no further from fp32
    /// than PyTorch's autocast is.
    func testStepZeroNoFurtherFromFP32ThanPyTorchAutocast() throws {
        try BF16Training.checkCPU()
        let f = try Self.fixture()
        let model = try f.model()
        try model.setConvolutions(BF16Training.convolutions)
        let logits = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
        let loss = model.backward(labels: f.labels)
        XCTAssertLessThan(relativeError(logits, try f.tensor("step0/logits")), 7.4e-2, "logits")
        XCTAssertEqual(loss, try f.tensor("step0/loss")[0], accuracy: 1e-2 * abs(try f.tensor("step0/loss")[0]), "loss")
        let gradients = model.gradients()
        let referenceNames = f.tensors.keys.filter { $0.hasPrefix("step0/grad/") }.sorted()
        XCTAssertEqual(referenceNames.count, model.parameters.count, "one reference gradient per parameter")
        var errors: [(String, Float)] = []
        for name in referenceNames {
            let parameter = String(name.dropFirst("step0/grad/".count))
            guard let mine = gradients[parameter] else { XCTFail("no gradient for \(parameter)"); continue }
            errors.append((parameter, relativeError(mine, try f.tensor(name))))
        }
        errors.sort { $0.1 > $1.1 }
        let median = errors[errors.count / 2].1
        XCTAssertLessThan(errors[0].1, 0.60, "worst: \(errors[0].0)")
        XCTAssertLessThan(median, 0.38, "median")
        print("bf16 step 0 against PyTorch fp32: median \(median), worst \(errors[0].0) \(errors[0].1), 3e-2 met by \(errors.filter { $0.1 < 3e-2 }.count) of \(errors.count)")
    }

    /// Where step 0's distance from fp32 comes from, in emulated bf16 on this fixture: rounding in the backward
    /// passes alone (x, W and dy of every convolution) keeps every gradient within the 3e-2 (median 0.5 %),
    /// while rounding the forward of a single convolution (the last one's x and W) moves the gradients by up to
    /// a quarter and the logits by 0.2 %: the forward's rounding changes BatchNorm's batch statistics, ReLU's
    /// masks and max-pooling's choices, and this random network's gradients depend on them far more than its
    /// logits do. A bf16 forward, which is where bf16 training gains its speed, cannot meet 3e-2 here.
    func testStepZeroGradientsMoveWithTheForwardsRounding() throws {
        let f = try Self.fixture()
        func errors(roundingForward: @escaping (Int) -> Bool) throws -> [Float] {
            let model = try f.model()
            var index = 0
            try model.setConvolutions { shape in
                defer { index += 1 }
                return EmulatedBF16Convolution(shape, forward: roundingForward(index), backward: true)
            }
            _ = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
            _ = model.backward(labels: f.labels)
            let gradients = model.gradients()
            return try f.tensors.keys.filter { $0.hasPrefix("step0/grad/") }.map { name in
                relativeError(gradients[String(name.dropFirst("step0/grad/".count))]!, try f.tensor(name))
            }.sorted()
        }
        let backwardOnly = try errors { _ in false }
        XCTAssertEqual(backwardOnly.count, 68)
        XCTAssertLessThan(backwardOnly.last!, 3e-2, "bf16 backward passes: every gradient within 3e-2")
        XCTAssertGreaterThan(backwardOnly.last!, 1e-3, "the backward's rounding shows")
        let lastForwardToo = try errors { $0 == 19 }  // conv1, then each block's: the last is layer4.1.conv2
        XCTAssertGreaterThan(lastForwardToo.last!, 0.1, "one convolution's forward rounding moves the gradients")
    }

    /// A frozen layer's bf16 weight is converted once and reused, until `setValues` changes the weight: then
    /// the model computes what a fresh model with those values computes.
    func testFrozenWeightsReconvertedAfterSetValues() throws {
        try BF16Training.checkCPU()
        let f = try Self.fixture()
        func frozenModel(_ state: StateDict) throws -> TrainableResNet {
            let config = ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 256, dropout: 0)
            let model = try TrainableResNet(architecture: Architecture(config), state: state)
            model.setBackboneFrozen(true)
            try model.setConvolutions(BF16Training.convolutions)
            return model
        }
        let model = try frozenModel(f.state)
        let first = model.forward(images: f.images, count: 16, height: 49, width: 49, training: false)
        XCTAssertEqual(model.forward(images: f.images, count: 16, height: 49, width: 49, training: false), first)
        let name = "layer4.1.conv2.weight"
        let changed = f.state[name]!.data.map { -$0 }
        model.parameter(named: name)!.setValues(changed)
        var state = f.state
        state[name] = Tensor(shape: f.state[name]!.shape, data: changed)
        let after = model.forward(images: f.images, count: 16, height: 49, width: 49, training: false)
        XCTAssertNotEqual(after, first)
        XCTAssertEqual(after, try frozenModel(state).forward(images: f.images, count: 16, height: 49, width: 49, training: false))
    }

    /// Trainable layers' bf16 weights are converted once per optimizer step: after AdamW moves them, the model
    /// computes what a fresh model with the stepped values computes (a stale copy would not).
    func testOptimizerStepReconvertsWeights() throws {
        try BF16Training.checkCPU()
        let f = try Self.fixture()
        let model = try f.model()
        try model.setConvolutions(BF16Training.convolutions)
        let optimizer = AdamW(parameters: model.parameters, lr: 1e-2)
        _ = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
        _ = model.backward(labels: f.labels)
        let before = model.forward(images: f.images, count: 16, height: 49, width: 49, training: false)
        XCTAssertEqual(model.forward(images: f.images, count: 16, height: 49, width: 49, training: false), before)
        optimizer.step()
        let after = model.forward(images: f.images, count: 16, height: 49, width: 49, training: false)
        XCTAssertNotEqual(after, before)
        let config = ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 256, dropout: 0)
        let fresh = try TrainableResNet(architecture: Architecture(config), state: model.stateDict())
        try fresh.setConvolutions(BF16Training.convolutions)
        XCTAssertEqual(after, fresh.forward(images: f.images, count: 16, height: 49, width: 49, training: false))
    }

    /// Back to fp32 after bf16: the fp32 engine's step 0 again (1e-4, the fp32 test's tolerance).
    func testUnsettingRestoresFP32() throws {
        try BF16Training.checkCPU()
        let f = try Self.fixture()
        let model = try f.model()
        try model.setConvolutions(BF16Training.convolutions)
        _ = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
        try model.setConvolutions(nil)
        _ = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
        _ = model.backward(labels: f.labels)
        XCTAssertLessThan(relativeError(model.gradients()["layer1.0.conv1.weight"]!, try f.tensor("step0/grad/layer1.0.conv1.weight")), 1e-4)
    }

    /// The head phase with train-mode BatchNorm (the seed's): the frozen backbone's convolutions run forward only
    /// (`BF16ForwardPlan`, layer4 by taps with packed weights) and compute what the training passes compute, up to
    /// summation order. Train-mode BatchNorm on this fixture turns such differences into flips of bf16 roundings
    /// downstream (bf16 against fp32: 7.4e-2 on the logits, `testStepZeroNoFurtherFromFP32ThanPyTorchAutocast`),
    /// so the logits and the running statistics they move are held to that against a model whose backward
    /// reaches the stem, and to fp32's reference; a wrong layout or a stale weight is off by far more.
    func testHeadPhaseForwardOnlyMatchesTheTrainingPasses() throws {
        try BF16Training.checkCPU()
        let f = try Self.fixture()
        func run(stemTrains: Bool) throws -> (logits: [Float], state: StateDict) {
            let model = try f.model()
            model.setBackboneFrozen(true)
            model.parameter(named: "conv1.weight")!.requiresGrad = stemTrains
            try model.setConvolutions(BF16Training.convolutions)
            var logits: [Float] = []
            for _ in 0..<2 {
                logits = model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
                model.backward(labels: f.labels)
            }
            return (logits, model.stateDict())
        }
        let forwardOnly = try run(stemTrains: false), training = try run(stemTrains: true)
        XCTAssertLessThan(relativeError(forwardOnly.logits, training.logits), 7.4e-2, "logits")
        XCTAssertLessThan(relativeError(forwardOnly.logits, try f.tensor("step0/logits")), 7.4e-2, "logits against fp32")
        for name in ["bn1.running_mean", "layer2.0.bn1.running_var", "layer4.1.bn2.running_mean"] {
            XCTAssertLessThan(relativeError(forwardOnly.state[name]!.data, training.state[name]!.data), 1e-2, name)
            XCTAssertNotEqual(forwardOnly.state[name]!.data, f.state[name]!.data, "\(name) moved")
        }
    }

    /// The head phase with frozen BatchNorm in eval mode runs the backbone as bf16 inference: its logits are the
    /// fp32 model's within bf16's error, and not equal to them.
    func testFrozenBackboneRunsBF16Inference() throws {
        try BF16Training.checkCPU()
        let f = try Self.fixture()
        func logits(_ bf16: Bool) throws -> [Float] {
            let model = try f.model()
            model.setBackboneFrozen(true)
            model.frozenBatchNorm = .eval
            if bf16 { model.frozenBackboneEngine = BF16Training.frozenBackbone }
            return model.forward(images: f.images, count: 16, height: 49, width: 49, training: true)
        }
        let fp32 = try logits(false), bf16 = try logits(true)
        let error = relativeError(bf16, fp32)
        // The 2-class logits of a random head are small next to the features they sum, so bf16's rounding of
        // every activation shows more here than on ImageNet's logits (DNNLPlanTests: 2e-2).
        XCTAssertLessThan(error, 0.15)
        XCTAssertGreaterThan(error, 1e-5)
    }
}

/// y = conv(x) with weight w for input geometry g, into a NaN-filled output: every output must be written, not
/// added to.
func runForward(_ conv: any TrainingConvolution, _ shape: ConvShape, _ g: Geometry, x: [Float], w: [Float],
                weightUnchanged: Bool = false, forBackward: Bool) -> [Float] {
    var y = [Float](repeating: .nan, count: g.output(of: shape).pixels * shape.outChannels)
    x.withUnsafeBufferPointer { xp in
        w.withUnsafeBufferPointer { wp in
            y.withUnsafeMutableBufferPointer {
                conv.forward(xp.baseAddress!, g, weight: wp.baseAddress!, weightUnchanged: weightUnchanged, forBackward: forBackward,
                             $0.baseAddress!)
            }
        }
    }
    return y
}

/// bf16 arithmetic emulated on the fp32 engine: x, W and dy rounded to bf16 (nearest, ties to even), products
/// summed in fp32, results fp32; in the forward, the backward passes, both (the default) or neither (`rounding`
/// false: plain fp32 in the same engine and order, for comparison).
final class EmulatedBF16Convolution: TrainingConvolution {
    let shape: ConvShape
    let scratch = ConvolutionScratch()
    let roundsForward: Bool, roundsBackward: Bool
    var input: [Float] = [], weight: [Float] = [], geometry = Geometry(batch: 0, height: 0, width: 0)

    init(_ shape: ConvShape, forward: Bool, backward: Bool) {
        self.shape = shape
        (roundsForward, roundsBackward) = (forward, backward)
    }

    convenience init(_ shape: ConvShape, rounding: Bool = true) { self.init(shape, forward: rounding, backward: rounding) }

    func prepare(_ g: Geometry) {}

    func rounded(_ values: [Float], _ rounding: Bool) -> [Float] {
        guard rounding else { return values }
        return values.map { v in
            let b = v.bitPattern
            return Float(bitPattern: (b &+ 0x7FFF &+ ((b >> 16) & 1)) & 0xFFFF_0000)
        }
    }

    func convolution(_ w: [Float], _ g: Geometry) -> (Convolution, Convolution.Method) {
        let conv = Convolution(shape, patchMajorWeight: w, bias: [Float](repeating: 0, count: shape.outChannels))
        let method = conv.method(g, laneImages: g.batch, algorithm: .im2col, trainable: true)
        conv.prepare(method, g)
        return (conv, method)
    }

    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, weight w: UnsafePointer<Float>, weightUnchanged: Bool,
                 forBackward: Bool, _ y: UnsafeMutablePointer<Float>) {
        input = Array(UnsafeBufferPointer(start: x, count: g.pixels * shape.inChannels))
        weight = Array(UnsafeBufferPointer(start: w, count: shape.outChannels * shape.patchSize))
        geometry = g
        let (conv, method) = convolution(rounded(weight, roundsForward), g)
        rounded(input, roundsForward).withUnsafeBufferPointer {
            conv.forward($0.baseAddress!, g, y, method: method, addBias: false, split: .lanes, scratch: scratch)
        }
    }

    func backward(_ dy: UnsafePointer<Float>, weightGradient: UnsafeMutablePointer<Float>?, inputGradient: UnsafeMutablePointer<Float>?) {
        let d = rounded(Array(UnsafeBufferPointer(start: dy, count: geometry.output(of: shape).pixels * shape.outChannels)), roundsBackward)
        let (conv, _) = convolution(rounded(weight, roundsBackward), geometry)
        rounded(input, roundsBackward).withUnsafeBufferPointer { x in
            d.withUnsafeBufferPointer { d in
                conv.backward(x.baseAddress!, geometry, d.baseAddress!, weightGradient: weightGradient,
                              inputGradient: inputGradient, algorithm: .im2col, scratch: scratch)
            }
        }
    }
}
