import Foundation

// Training layers as explicit forward/backward pairs over NHWC activations ([rows, channels] matrices,
// rows = N·H·W), one file each in this folder. Each layer owns its output and input-gradient buffers, reused
// across steps, and keeps what its backward pass needs (its input pointer, batch statistics, argmax, mask).

/// How a frozen BatchNorm (weight and bias not trainable) behaves during training.
public enum FrozenBatchNormMode: String, Sendable, Codable, CaseIterable {
    /// Batch statistics, running statistics keep moving: what the seed notebook does (PyTorch's
    /// `requires_grad = False` on a model left in train mode).
    case train
    /// Running statistics, nothing moves: Keras' recommendation; the frozen layers compute exactly what they
    /// compute at inference.
    case eval
}

/// ResNet-18 for training, PyTorch-exact: explicit forward/backward, parameters and gradients addressed by
/// torchvision name, per-parameter freezing. A frozen prefix of the network gets no backward at all.
public final class TrainableResNet {
    public let architecture: Architecture
    /// Frozen BatchNorms in training: `.train` (default) is the seed's behaviour, batch statistics with moving
    /// running statistics. It reproduces the seed recipe's numbers, and since the fine-tuning phase trains the
    /// whole model with batch statistics anyway, the head phase lets the running statistics adapt to the
    /// pathology images first instead of switching statistics at the phase boundary. `.eval` is Keras' choice.
    public var frozenBatchNorm: FrozenBatchNormMode = .train
    /// Per-class weights of the training loss (PyTorch's `CrossEntropyLoss(weight:)`); nil: plain mean.
    public var classWeights: [Float]?
    /// Seeds the dropout masks.
    public var rng = SplitMix64(seed: 0)
    /// How the convolutions are computed (every choice gives PyTorch's results; `.automatic` is the fastest).
    public var convolutionAlgorithm: ConvolutionAlgorithm {
        get { workspace.algorithm }
        set { workspace.algorithm = newValue; fusedBackbone = nil }
    }

    let workspace = TrainingWorkspace()

    /// Computes every backbone convolution through `factory` (bf16 on oneDNN), or through the fp32 engine
    /// when nil (the default). Fails, leaving the model unchanged, when the factory does.
    public func setConvolutions(_ factory: TrainingConvolutionFactory?) throws {
        let layers = convolutionLayers
        let made = try layers.map { layer in try factory.map { try $0(layer.shape) } }
        for (layer, conv) in zip(layers, made) { layer.external = conv }
        fusedBackbone = nil
    }

    /// Builds the external convolutions' work for batches of `count` images of height x width (see
    /// `TrainingConvolution.prepare`); nothing to do without them.
    public func prepareConvolutions(count: Int, height: Int, width: Int) throws {
        for (layer, g) in zip(convolutionLayers, architecture.convolutionInputs(Geometry(batch: count, height: height, width: width))) {
            try layer.external?.prepare(g)
        }
    }

    /// One line per external convolution for batches of `count` images of height x width: its parameter's name,
    /// shape, input size and `TrainingConvolution.describe` (a debug log of what computes it).
    public func describeConvolutions(count: Int, height: Int, width: Int) throws -> [String] {
        try zip(convolutionLayers, architecture.convolutionInputs(Geometry(batch: count, height: height, width: width))).compactMap { layer, g in
            guard let external = layer.external else { return nil }
            let s = layer.shape, name = layer.weight.name.replacingOccurrences(of: ".weight", with: "")
            return "\(name) \(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels) on \(g.height)x\(g.width): \(try external.describe(g))"
        }
    }

    /// The engine for a frozen backbone in eval mode (`fusedFrozenBackbone`), given the model's whole state;
    /// nil: the fp32 `InferencePlan`. bf16 training sets `DNNLPlan` here.
    public var frozenBackboneEngine: ((Architecture, StateDict) throws -> any InferenceEngine)? {
        didSet { fusedBackbone = nil }
    }

    /// Every convolution in forward order (the stem, then per block conv1, the downsample, conv2), as
    /// `Architecture.convolutionInputs` lists their inputs.
    private var convolutionLayers: [Conv2dLayer] {
        [stemConv] + blocks.flatMap { b in [b.conv1] + (b.downsample.map { [$0.conv] } ?? []) + [b.conv2] }
    }
    let stemConv: Conv2dLayer, stemBN: BatchNormLayer, maxPool: MaxPoolLayer
    let blocks: [BasicBlockLayer]
    // Head: either `fc` alone, or bn1 → dropout → fc1(+ReLU) → bn2 → dropout → fc2.
    let headBN1: BatchNormLayer?, dropout1: DropoutLayer?, fc1: LinearLayer?
    let headBN2: BatchNormLayer?, dropout2: DropoutLayer?
    let classifier: LinearLayer
    /// Every trainable tensor in torchvision order.
    public let parameters: [TrainableParameter]
    let batchNorms: [(name: String, layer: BatchNormLayer)]

    private let pooled = FloatBuffer(), poolGradient = FloatBuffer(), logitGradient = FloatBuffer()
    private var fusedBackbone: (plan: any InferenceEngine, key: Int)?
    private var lastGeometry = Geometry(batch: 0, height: 0, width: 0)
    /// Whether the last forward was in training mode (an evaluation-mode one keeps nothing for a backward).
    private var lastForwardTrained = false
    private var finalGeometry = Geometry(batch: 0, height: 0, width: 0)
    private var logits: UnsafeMutablePointer<Float>?

    public var numClasses: Int { architecture.config.numClasses }

    public init(architecture: Architecture, state: StateDict) throws {
        try architecture.validate(state)
        self.architecture = architecture
        let eps = architecture.config.batchNormEpsilon
        var parameters: [TrainableParameter] = []
        var batchNorms: [(String, BatchNormLayer)] = []
        let workspace = workspace
        func param(_ name: String, conv: ConvShape? = nil) -> TrainableParameter {
            let t = state[name]!
            let p = TrainableParameter(name: name, shape: t.shape, convShape: conv, torchValues: t.data)
            parameters.append(p)
            return p
        }
        func conv(_ name: String, _ shape: ConvShape) -> Conv2dLayer {
            Conv2dLayer(shape, weight: param("\(name).weight", conv: shape), workspace: workspace)
        }
        func bn(_ name: String, relu: Bool) -> BatchNormLayer {
            let weight = param("\(name).weight"), bias = param("\(name).bias")
            let layer = BatchNormLayer(channels: weight.count, epsilon: eps, weight: weight, bias: bias,
                                       runningMean: state["\(name).running_mean"]!.data,
                                       runningVar: state["\(name).running_var"]!.data,
                                       batchesTracked: Int(state["\(name).num_batches_tracked"]?.data.first ?? 0),
                                       relu: relu)
            batchNorms.append((name, layer))
            return layer
        }
        stemConv = conv("conv1", architecture.stem)
        stemBN = bn("bn1", relu: true)
        maxPool = MaxPoolLayer(architecture.maxPool)
        blocks = architecture.blocks.map { b in
            let c1 = conv("\(b.name).conv1", b.conv1), n1 = bn("\(b.name).bn1", relu: true)
            let c2 = conv("\(b.name).conv2", b.conv2), n2 = bn("\(b.name).bn2", relu: true)
            let ds = b.downsample.map { (conv: conv("\(b.name).downsample.0", $0), bn: bn("\(b.name).downsample.1", relu: false)) }
            return BasicBlockLayer(conv1: c1, bn1: n1, conv2: c2, bn2: n2, downsample: ds)
        }
        switch architecture.config.head {
        case .linear:
            headBN1 = nil; dropout1 = nil; fc1 = nil; headBN2 = nil; dropout2 = nil
            classifier = LinearLayer(weight: param("fc.weight"), bias: param("fc.bias"), relu: false)
        case .mlp:
            let p = architecture.config.dropout
            headBN1 = bn("head.bn1", relu: false)
            dropout1 = DropoutLayer(probability: p)
            fc1 = LinearLayer(weight: param("head.fc1.weight"), bias: param("head.fc1.bias"), relu: true)
            headBN2 = bn("head.bn2", relu: false)
            dropout2 = DropoutLayer(probability: p)
            classifier = LinearLayer(weight: param("head.fc2.weight"), bias: param("head.fc2.bias"), relu: false)
        }
        self.parameters = parameters
        self.batchNorms = batchNorms
    }

    public func parameter(named name: String) -> TrainableParameter? { parameters.first { $0.name == name } }

    /// Freezes (or unfreezes) every parameter whose name satisfies `predicate`.
    public func setRequiresGrad(_ flag: Bool, where predicate: (String) -> Bool) {
        for p in parameters where predicate(p.name) { p.requiresGrad = flag }
    }

    /// Freezes or unfreezes the backbone (everything but `fc.*` / `head.*`).
    public func setBackboneFrozen(_ frozen: Bool) {
        setRequiresGrad(!frozen) { !Self.isHeadName($0) }
    }

    public static func isHeadName(_ name: String) -> Bool { name.hasPrefix("fc.") || name.hasPrefix("head.") }

    /// The whole state dict in torchvision layout (running statistics and counters included).
    public func stateDict() -> StateDict {
        var state: StateDict = [:]
        for p in parameters { state[p.name] = Tensor(shape: p.shape, data: p.values) }
        for (name, layer) in batchNorms {
            state["\(name).running_mean"] = Tensor(shape: [layer.channels], data: layer.runningMean)
            state["\(name).running_var"] = Tensor(shape: [layer.channels], data: layer.runningVar)
            state["\(name).num_batches_tracked"] = Tensor(shape: [], data: [Float(layer.batchesTracked)])
        }
        return state
    }

    /// Gradients of the last backward pass by torchvision name (trainable parameters only).
    public func gradients() -> [String: [Float]] {
        var result: [String: [Float]] = [:]
        for p in parameters where p.requiresGrad { result[p.name] = p.gradients }
        return result
    }

    /// With the whole backbone frozen and frozen BatchNorm in eval mode, the backbone is a fixed function: run
    /// it as a backbone-only inference plan (BatchNorm folded, epilogues fused), whose `features` are what the
    /// head reads. Rebuilt when a backbone value or running statistic changes.
    private func fusedFrozenBackbone() -> (any InferenceEngine)? {
        let backbone = parameters.filter { !Self.isHeadName($0.name) }
        guard frozenBatchNorm == .eval, backbone.allSatisfy({ !$0.requiresGrad }) else { return nil }
        let key = backbone.reduce(0) { $0 &+ $1.version }
            &+ batchNorms.filter { !Self.isHeadName($0.name) }.reduce(0) { $0 &+ $1.layer.batchesTracked }
        if let fusedBackbone, fusedBackbone.key == key { return fusedBackbone.plan }
        let plan: any InferenceEngine
        if let frozenBackboneEngine {
            guard let engine = try? frozenBackboneEngine(architecture, stateDict()) else { return nil }
            plan = engine
        } else {
            let state = stateDict().filter { !Self.isHeadName($0.key) }
            guard let fp32 = try? InferencePlan(architecture: architecture, state: state, head: false) else { return nil }
            fp32.algorithm = convolutionAlgorithm
            plan = fp32
        }
        fusedBackbone = (plan, key)
        return plan
    }

    /// Whether backward reaches the stem (and so the max pool).
    private var stemTrains: Bool { stemConv.weight.requiresGrad || !stemBN.isFrozen }

    /// The first block backward reaches: 0 when the stem trains, else the first block with a trainable
    /// parameter, `blocks.count` when none has one.
    private var firstBackwardBlock: Int {
        stemTrains ? 0 : (blocks.firstIndex { $0.parameters.contains { $0.requiresGrad } } ?? blocks.count)
    }

    private func usesBatchStatistics(_ layer: BatchNormLayer, training: Bool) -> Bool {
        training && !(frozenBatchNorm == .eval && layer.isFrozen)
    }

    /// Forward pass over NHWC images [count, height, width, 3]. `training`: BatchNorm uses batch statistics
    /// (frozen ones per `frozenBatchNorm`) and dropout is active. Returns logits [count, numClasses].
    public func forward(images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                        training: Bool) -> UnsafePointer<Float> {
        precondition(count > 0 && min(height, width) >= ModelConfig.minimumInputSide, "invalid batch geometry")
        let stats = { [unowned self] (layer: BatchNormLayer) in usesBatchStatistics(layer, training: training) }
        let input = Geometry(batch: count, height: height, width: width)
        lastGeometry = input
        lastForwardTrained = training
        let features = architecture.config.featureWidth
        let f = pooled.reserve(count * features)
        // A backend that cannot serve this batch's shape leaves the work to the layers, which compute the same.
        if training, let plan = fusedFrozenBackbone(),
           (try? plan.features(images: images, count: count, height: height, width: width, features: f)) != nil {
        } else {
            // The units backward will reach (see `backward`): none in evaluation.
            let firstBackward = training ? firstBackwardBlock : blocks.count
            var (x, g) = stemConv.forward(images, input, forBackward: training && stemTrains)
            let s = stemBN.forward(x, rows: g.pixels, batchStatistics: stats(stemBN))
            (x, g) = maxPool.forward(s, g, recordWindow: training && stemTrains)
            for (index, block) in blocks.enumerated() {
                (x, g) = block.forward(x, g, statistics: stats, forBackward: index >= firstBackward)
            }
            finalGeometry = g
            globalAveragePool(x, g, channels: features, f)
        }
        var h = UnsafePointer(f)
        if let headBN1, let dropout1, let fc1, let headBN2, let dropout2 {
            h = UnsafePointer(headBN1.forward(h, rows: count, batchStatistics: stats(headBN1)))
            h = dropout1.forward(h, count: count * features, training: training, rng: &rng)
            h = UnsafePointer(fc1.forward(h, batch: count))
            h = UnsafePointer(headBN2.forward(h, rows: count, batchStatistics: stats(headBN2)))
            h = dropout2.forward(h, count: count * fc1.outputs, training: training, rng: &rng)
        }
        let y = classifier.forward(h, batch: count)
        logits = y
        return UnsafePointer(y)
    }

    /// Convenience: NHWC images in, logits [count, numClasses] out.
    public func forward(images: [Float], count: Int, height: Int, width: Int, training: Bool) -> [Float] {
        precondition(images.count == count * height * width * 3, "image data does not match \(count)x\(height)x\(width)x3")
        return images.withUnsafeBufferPointer { buffer in
            let y = forward(images: buffer.baseAddress!, count: count, height: height, width: width, training: training)
            return Array(UnsafeBufferPointer(start: y, count: count * numClasses))
        }
    }

    /// Mean cross-entropy (weighted by `classWeights`) of the last forward's logits, and the backward pass filling every trainable
    /// parameter's gradient. Stops at the earliest trainable layer: a frozen backbone gets no backward. The last
    /// forward must have been in training mode.
    @discardableResult
    public func backward(labels: [Int]) -> Float {
        guard let logits else { preconditionFailure("backward before forward") }
        precondition(lastForwardTrained, "backward after a forward with training: false")
        let count = lastGeometry.batch
        precondition(labels.count == count && labels.allSatisfy { (0..<numClasses).contains($0) }, "bad labels")
        let dLogits = logitGradient.reserve(count * numClasses)
        let loss = weightedCrossEntropy(logits, labels: labels, classes: numClasses, weights: classWeights, gradient: dLogits)

        let stop = firstBackwardBlock
        let backboneTrains = stop < blocks.count

        var d = UnsafePointer(dLogits)
        if let headBN1, let dropout1, let fc1, let headBN2, let dropout2 {
            d = UnsafePointer(classifier.backward(d, needsInputGradient: true)!)
            d = dropout2.backward(d)
            d = UnsafePointer(headBN2.backward(d, needsInputGradient: true)!)
            d = UnsafePointer(fc1.backward(d, needsInputGradient: true)!)
            d = dropout1.backward(d)
            guard let dHead = headBN1.backward(d, needsInputGradient: backboneTrains) else { return loss }
            d = UnsafePointer(dHead)
        } else {
            guard let dHead = classifier.backward(d, needsInputGradient: backboneTrains) else { return loss }
            d = UnsafePointer(dHead)
        }
        // Average pool: every pixel of an image gets its channel's gradient / area.
        let g = finalGeometry, features = architecture.config.featureWidth, area = g.height * g.width
        let dPool = poolGradient.reserve(g.pixels * features)
        let scale = 1 / Float(area)
        for n in 0..<g.batch {
            for i in 0..<area {
                let dst = dPool + (n * area + i) * features, src = d + n * features
                for c in 0..<features { dst[c] = src[c] * scale }
            }
        }
        var current = UnsafePointer(dPool)
        for index in stride(from: blocks.count - 1, through: stop, by: -1) {
            let needsInput = stemTrains || index > stop
            guard let dx = blocks[index].backward(current, needsInputGradient: needsInput) else { return loss }
            current = UnsafePointer(dx)
        }
        guard stemTrains else { return loss }
        let dStem = maxPool.backward(current)
        if let dBN = stemBN.backward(dStem, needsInputGradient: stemConv.weight.requiresGrad) {
            _ = stemConv.backward(dBN, needsInputGradient: false)
        }
        return loss
    }
}
