import Foundation
import ResNetModel
import ResNetSupport

/// Reads ResNet-18 ONNX exports (TorchScript or dynamo exporter, folded or not, MXNet-style zoo files, …).
///
/// The graph is matched by structure, never by names: from the input, Conv[+BatchNormalization] → Relu →
/// MaxPool, then residual blocks (two 3x3 convolutions, with or without a 1x1 downsample, Add, Relu), then
/// global average pooling (GlobalAveragePool, ReduceMean or AveragePool), an optional Flatten/Reshape/Squeeze,
/// and Gemm or MatMul + Add. What is found is mapped onto torchvision's names.
public enum ONNXImporter {
    public static func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
        let graph = try ONNXGraph.read(path: path)
        var network = try ONNXNetworkMatcher(graph: graph, path: path).match()
        let config = ModelConfig(numClasses: network.numClasses, head: network.head, hiddenUnits: network.hiddenUnits,
                                 baseWidth: network.baseWidth, batchNormEpsilon: network.epsilon,
                                 samePadding: network.samePadding)
        do { try Architecture(config).validate(network.state) } catch let error as StateDictError {
            throw FileError(path, "not a ResNet-18 of the shape its stem implies: \(error)")
        }
        for (name, tensor) in network.state.sorted(by: { $0.key < $1.key }) where !tensor.data.allSatisfy(\.isFinite) {
            throw FileError(path, "\(name) holds NaN or infinite values")
        }
        guard network.epsilon.isFinite, network.epsilon > 0 else {
            throw FileError(path, "BatchNormalization epsilon \(network.epsilon) is not a positive number")
        }
        if let names = options.classNames, names.count != config.numClasses {
            throw FileError(path, "\(names.count) class names given for a model with \(config.numClasses) classes")
        }
        var notes: [String] = network.headNotes
        if network.foldedCount > 0 {
            notes += try rebuildFoldedBatchNorms(&network, config: config, calibration: options.calibration, path: path)
        }
        // Files written by export-onnx carry class names and preprocessing; others get the defaults.
        let decoder = JSONDecoder()
        let storedNames = graph.metadata[ONNXMetadataKey.classes]
            .flatMap { try? decoder.decode([String].self, from: Data($0.utf8)) }
            .flatMap { $0.count == config.numClasses ? $0 : nil }
        let preprocessing = graph.metadata[ONNXMetadataKey.preprocessing]
            .flatMap { try? decoder.decode(Preprocessing.self, from: Data($0.utf8)) } ?? Preprocessing()
        let digest = (try? FileDigest.sha256(path: path)) ?? ""
        let format = "ONNX (opset \(graph.opset))"
        let checkpoint = Checkpoint(
            config: config, state: network.state, classNames: options.classNames ?? storedNames, preprocessing: preprocessing,
            provenance: Provenance(source: path, sourceSHA256: digest,
                                   producer: "import-weights (\(format)\(graph.producer.isEmpty ? "" : ", " + graph.producer))",
                                   notes: notes))
        return ImportedModel(checkpoint: checkpoint, sourceFormat: format,
                             producer: graph.producer.isEmpty ? nil : graph.producer,
                             batchNormFolded: network.foldedCount > 0, notes: notes)
    }

    /// Images used when the caller gives none: 8 pseudo-random N(0, 1) images of 64x64 (fixed seed).
    static let syntheticCalibrationCount = 8, syntheticCalibrationSide = 64

    /// Gives every folded convolution a BatchNorm again (see `InferencePlan.convolutionStatistics`):
    /// running statistics from the calibration images' conv outputs, gamma = sqrt(var + eps), beta = bias + mean.
    /// Eval-mode output is exactly the file's whatever the images; the images decide how train mode behaves.
    /// Without images, synthetic N(0, 1) images stand in: ImageNet-normalised inputs have about that scale, so
    /// the statistics have the right order of magnitude (mean 0 / variance 1 would instead rescale every
    /// channel by its true standard deviation as soon as training starts).
    static func rebuildFoldedBatchNorms(_ network: inout ONNXNetwork, config: ModelConfig,
                                        calibration: CalibrationImages?, path: String) throws -> [String] {
        let images = calibration ?? syntheticImages()
        guard images.count > 0, images.height >= ModelConfig.minimumInputSide, images.width >= ModelConfig.minimumInputSide,
              images.pixels.count == images.count * images.height * images.width * 3 else {
            throw FileError(path, "calibration images must be at least \(ModelConfig.minimumInputSide)x\(ModelConfig.minimumInputSide)")
        }
        let plan = try InferencePlan(architecture: Architecture(config), state: network.state)
        let statistics = plan.convolutionStatistics(images: images.pixels, count: images.count,
                                                    height: images.height, width: images.width)
        let eps = config.batchNormEpsilon
        for bn in network.foldedBatchNorms {
            guard let stats = statistics[bn], let bias = network.state["\(bn).bias"]?.data else { continue }
            let channels = stats.mean.count
            network.state["\(bn).running_mean"] = Tensor(shape: [channels], data: stats.mean)
            network.state["\(bn).running_var"] = Tensor(shape: [channels], data: stats.variance)
            network.state["\(bn).weight"] = Tensor(shape: [channels], data: stats.variance.map { ($0 + eps).squareRoot() })
            network.state["\(bn).bias"] = Tensor(shape: [channels], data: zip(bias, stats.mean).map { $0 + $1 })
        }
        let source = calibration.map { "\($0.count) calibration images of \($0.width)x\($0.height)" }
            ?? "\(syntheticCalibrationCount) synthetic N(0,1) images of \(syntheticCalibrationSide)x\(syntheticCalibrationSide) (no calibration images given; use --calibrate DIR for real ones)"
        return ["BatchNorm was folded into the convolutions in the file (\(network.foldedCount) of \(network.convolutionCount)); "
                + "rebuilt so eval mode computes the same: running_mean/running_var = per-channel mean and biased variance "
                + "of each convolution's output on \(source), weight = sqrt(running_var + eps), bias = conv bias + running_mean"]
    }

    static func syntheticImages() -> CalibrationImages {
        let side = syntheticCalibrationSide, count = syntheticCalibrationCount
        var rng = SplitMix64(seed: 0x9E37_79B9_7F4A_7C15)
        let pixels = (0..<(count * side * side * 3)).map { _ in Float(rng.nextStandardNormal()) }
        return CalibrationImages(pixels: pixels, count: count, height: side, width: side)
    }
}

/// What the matcher found, in torchvision's names.
struct ONNXNetwork {
    var state: StateDict = [:]
    var numClasses = 0, baseWidth = 0
    var head = HeadKind.linear, hiddenUnits = 256
    var headNotes: [String] = []
    var epsilon: Float = 1e-5
    /// Layers padded TensorFlow's way (`ModelConfig.samePadding`).
    var samePadding: Set<String> = []
    /// BatchNorm names whose convolution had its BatchNorm folded in (identity placeholders until rebuilt).
    var foldedBatchNorms: [String] = []
    var convolutionCount = 0
    var foldedCount: Int { foldedBatchNorms.count }
}

/// Walks an ONNX graph from its input and recognises ResNet-18's structure.
struct ONNXNetworkMatcher {
    /// A convolution and what followed it: a BatchNormalization, or nothing (folded, bias in the conv).
    struct ConvUnit {
        var node: ONNXGraph.Node
        var weight: ONNXTensor
        var bias: [Float]?
        var kernel: Int, stride: Int
        /// [top, left, bottom, right], or nil with `auto_pad = SAME_UPPER` (TensorFlow's 'same').
        var pads: [Int]?
        var batchNorm: (gamma: [Float], beta: [Float], mean: [Float], variance: [Float], epsilon: Float)?
        var output: String
        var outChannels: Int { weight.dims[0] }
    }

    struct Block {
        var conv1: ConvUnit, conv2: ConvUnit, downsample: ConvUnit?
    }

    let graph: ONNXGraph
    let path: String
    /// Constant values: initializers, Constant nodes, and Identity/Cast of constants.
    private(set) var constants: [String: ONNXTensor]
    /// Nodes that compute on data (not constants), by the values they read.
    private var consumers: [String: [Int]] = [:]
    private var computing: [ONNXGraph.Node] = []

    /// Operators a ResNet-18 export may contain (shape plumbing included).
    static let supported: Set<String> = [
        "Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "ReduceMean", "AveragePool",
        "Flatten", "Reshape", "Squeeze", "Gemm", "MatMul", "Identity", "Dropout", "Constant", "Cast",
        "Shape", "Gather", "Unsqueeze", "Concat",
    ]
    /// Nodes passed through as if absent (eval-mode Dropout is the identity).
    static let passThrough: Set<String> = ["Identity", "Dropout"]

    init(graph: ONNXGraph, path: String) throws {
        self.graph = graph
        self.path = path
        constants = graph.initializers
        for node in graph.nodes {
            if node.opType == "Constant", let output = node.outputs.first {
                constants[output] = try Self.constantValue(node, path: path)
            } else if ["Identity", "Cast"].contains(node.opType), let input = node.inputs.first,
                      let value = constants[input], let output = node.outputs.first {
                constants[output] = value
            } else {
                computing.append(node)
            }
        }
        for (index, node) in computing.enumerated() {
            for input in Set(node.inputs) where !input.isEmpty && constants[input] == nil {
                consumers[input, default: []].append(index)
            }
        }
    }

    static func constantValue(_ node: ONNXGraph.Node, path: String) throws -> ONNXTensor {
        let a = node.attributes
        if let t = a["value"]?.tensor { return t }
        if let f = a["value_float"]?.float { return ONNXTensor(dims: [], values: [f]) }
        if let f = a["value_floats"]?.floats { return ONNXTensor(dims: [f.count], values: f) }
        if let i = a["value_int"]?.int { return ONNXTensor(dims: [], values: [Float(i)]) }
        if let i = a["value_ints"]?.ints { return ONNXTensor(dims: [i.count], values: i.map(Float.init)) }
        throw FileError(path, "\(node.label) holds no value this importer reads")
    }

    private func fail(_ problem: String) -> FileError { FileError(path, problem) }

    private func notResNet(_ problem: String) -> FileError { FileError(path, "not a ResNet-18: \(problem)") }

    private func notTorchvision(_ problem: String) -> FileError { FileError(path, "not torchvision's ResNet-18: \(problem)") }

    /// Nodes reading `value`, looking through Identity/Dropout (a chain no longer than the graph: a file
    /// whose Identity nodes form a cycle cannot send this into endless recursion).
    private func readers(of value: String, depth: Int = 0) -> [ONNXGraph.Node] {
        (consumers[value] ?? []).flatMap { index -> [ONNXGraph.Node] in
            let node = computing[index]
            if Self.passThrough.contains(node.opType), let output = node.outputs.first, node.inputs.first == value,
               depth < computing.count {
                return readers(of: output, depth: depth + 1)
            }
            return [node]
        }
    }

    /// The single node reading `value`, which must be one of `expected`.
    private func next(_ value: String, after: String, expected: Set<String>) throws -> ONNXGraph.Node {
        let nodes = readers(of: value)
        guard let node = nodes.first else { throw notResNet("the graph ends after \(after), expected \(expected.sorted().joined(separator: " or "))") }
        for n in nodes where !Self.supported.contains(n.opType) {
            throw fail("unsupported operator \(n.opType) (node '\(n.name)')")
        }
        guard nodes.count == 1 else {
            throw notResNet("the output of \(after) feeds \(nodes.count) nodes (\(nodes.map(\.label).joined(separator: ", ")))")
        }
        guard expected.contains(node.opType) else {
            throw notResNet("expected \(expected.sorted().joined(separator: " or ")) after \(after), found \(node.label)")
        }
        return node
    }

    private func constant(_ node: ONNXGraph.Node, input index: Int, _ what: String) throws -> ONNXTensor {
        guard index < node.inputs.count, let value = constants[node.inputs[index]] else {
            throw fail("\(node.label): its \(what) is not a constant in the file")
        }
        return value
    }

    /// A Conv (square kernel, equal strides, symmetric padding, group 1, dilation 1) and a BatchNormalization after it, if any.
    private func convUnit(_ node: ONNXGraph.Node) throws -> ConvUnit {
        let weight = try constant(node, input: 1, "weight")
        guard weight.dims.count == 4, weight.dims[2] == weight.dims[3] else {
            throw notResNet("\(node.label) has weight shape \(describe(shape: weight.dims)), expected a square 2-D kernel")
        }
        let group = node.int("group") ?? 1
        guard group == 1 else { throw notResNet("\(node.label) is a grouped convolution (group \(group)), as in MobileNet-style networks") }
        guard (node.ints("dilations") ?? []).allSatisfy({ $0 == 1 }) else { throw notResNet("\(node.label) is dilated") }
        let kernel = weight.dims[2]
        let strides = node.ints("strides") ?? [1, 1]
        guard strides.count == 2, strides[0] == strides[1] else { throw notResNet("\(node.label) has strides \(strides)") }
        let pads = try pads(node)
        var bias: [Float]?
        if node.inputs.count > 2 && !node.inputs[2].isEmpty {
            let b = try constant(node, input: 2, "bias")
            guard b.values.count == weight.dims[0] else { throw fail("\(node.label): bias has \(b.values.count) values for \(weight.dims[0]) channels") }
            bias = b.values
        }
        var unit = ConvUnit(node: node, weight: weight, bias: bias, kernel: kernel, stride: strides[0], pads: pads,
                            output: node.outputs.first ?? "")
        let after = readers(of: unit.output)
        if after.count == 1, after[0].opType == "BatchNormalization" {
            let bn = after[0]
            let values = try (1...4).map { try constant(bn, input: $0, ["", "scale", "bias", "mean", "variance"][$0]).values }
            guard values.allSatisfy({ $0.count == unit.outChannels }) else {
                throw fail("\(bn.label): parameters do not have \(unit.outChannels) channels")
            }
            var mean = values[2]
            if let bias {  // a conv bias before BatchNorm shifts the mean it subtracts
                for c in mean.indices { mean[c] -= bias[c] }
                unit.bias = nil
            }
            unit.batchNorm = (values[0], values[1], mean, values[3], bn.attributes["epsilon"]?.float ?? 1e-5)
            unit.output = bn.outputs.first ?? ""
        }
        return unit
    }

    /// A Conv's or MaxPool's padding: explicit `pads` [top, left, bottom, right], or nil for `auto_pad =
    /// SAME_UPPER` (TensorFlow's 'same', what converters from Keras write). SAME_LOWER puts the extra pixel
    /// before, which no framework this tool reads from does.
    func pads(_ node: ONNXGraph.Node) throws -> [Int]? {
        switch node.attributes["auto_pad"]?.string ?? "NOTSET" {
        case "NOTSET", "":
            let pads = node.ints("pads") ?? [0, 0, 0, 0]
            guard pads.count == 4, pads.allSatisfy({ (0..<64).contains($0) }) else {
                throw notResNet("\(node.label) has pads \(pads), expected four small non-negative values")
            }
            return pads
        case "VALID": return [0, 0, 0, 0]
        case "SAME_UPPER": return nil
        case let other: throw notResNet("\(node.label) has auto_pad \(other) (explicit pads, VALID and SAME_UPPER are read)")
        }
    }

    /// Whether a layer's padding is TensorFlow's 'same' (true) or PyTorch's (false) for its input of
    /// `height` x `width` (nil where the graph leaves the size open); anything else is not ResNet-18.
    func usesSamePadding(_ pads: [Int]?, _ shape: ConvShape, height: Int?, width: Int?, label: String) throws -> Bool {
        guard let pads else { return true }
        if pads == Array(repeating: shape.padding, count: 4) { return false }
        var same = shape
        same.samePadding = true
        if let height, let width {
            let h = same.pads(height), w = same.pads(width)
            if pads == [h.before, w.before, h.after, w.after] { return true }
            throw notResNet("\(label) pads its \(height)x\(width) input by \(pads) (top, left, bottom, right): neither PyTorch's \(shape.padding) on every side nor TensorFlow's 'same' [\(h.before), \(w.before), \(h.after), \(w.after)]")
        }
        throw notResNet("\(label) has asymmetric pads \(pads) on an input whose size the graph leaves open: which padding rule they follow cannot be told")
    }

    /// Follows `value` through a Relu and returns the Relu's output.
    private func relu(after value: String, _ what: String) throws -> String {
        try next(value, after: what, expected: ["Relu"]).outputs.first ?? ""
    }

    func match() throws -> ONNXNetwork {
        let inputs = graph.inputs.filter { constants[$0.name] == nil }
        guard inputs.count == 1, let input = inputs.first else {
            throw notResNet("the graph has \(inputs.count) data inputs, expected one image batch")
        }
        guard input.dims.isEmpty || input.dims.count == 4 else {
            throw notResNet("the input '\(input.name)' has \(input.dims.count) dimensions, expected [batch, 3, height, width]")
        }
        // Stem: conv 7x7/2 pad 3 [BN] → Relu → MaxPool 3x3/2 pad 1.
        if let bn = readers(of: input.name).first(where: { $0.opType == "BatchNormalization" }) {
            throw notTorchvision("an input BatchNormalization (\(bn.label)) normalises the image before the stem convolution")
        }
        let first = try next(input.name, after: "the input '\(input.name)'", expected: ["Conv"])
        let stem = try convUnit(first)
        guard stem.kernel == 7, stem.stride == 2, stem.weight.dims[1] == 3, stem.outChannels > 0 else {
            throw notResNet("the first convolution is \(stem.kernel)x\(stem.kernel) stride \(stem.stride) over \(stem.weight.dims[1]) channels; ResNet's stem is 7x7 stride 2 over 3")
        }
        var x = try relu(after: stem.output, stem.node.label)
        let pool = try next(x, after: "the stem", expected: ["MaxPool"])
        guard pool.ints("kernel_shape") == [3, 3], (pool.ints("strides") ?? [1, 1]) == [2, 2],
              (pool.int("ceil_mode") ?? 0) == 0 else {
            throw notResNet("\(pool.label) is not a 3x3 stride 2 max pool")
        }
        let poolPads = try pads(pool)
        x = pool.outputs.first ?? ""

        // Residual blocks until the pooling.
        var blocks: [Block] = []
        while true {
            let readersOfX = readers(of: x)
            if readersOfX.count == 1, ["GlobalAveragePool", "ReduceMean", "AveragePool"].contains(readersOfX[0].opType) { break }
            guard blocks.count < 8 else { throw notResNet("more than 8 residual blocks (ResNet-18 has 2 per stage)") }
            (blocks, x) = try block(from: x, readers: readersOfX, blocks: blocks)
        }
        guard blocks.count == 8 else { throw notResNet("found \(blocks.count) residual blocks, ResNet-18 has 8") }

        var network = ONNXNetwork()
        network.baseWidth = stem.outChannels
        let architecture = Architecture(ModelConfig(baseWidth: network.baseWidth))
        let units = [stem] + blocks.flatMap { [$0.conv1, $0.conv2] + ($0.downsample.map { [$0] } ?? []) }
        let named = architecture.namedConvolutions
        guard units.count == named.count else {
            throw notResNet("found \(units.count) convolutions, ResNet-18 at width \(network.baseWidth) has \(named.count)")
        }
        network.epsilon = units.compactMap { $0.batchNorm?.epsilon }.first ?? 1e-5
        network.convolutionCount = units.count
        // Each layer's padding rule, from its input size where the graph fixes it (Keras converters write the
        // 'same' padding of their export size as explicit pads).
        var sides: (height: Int?, width: Int?) = input.dims.count == 4 ? (input.dims[2], input.dims[3]) : (nil, nil)
        func outputSides(_ shape: ConvShape, _ sides: (height: Int?, width: Int?)) -> (height: Int?, width: Int?) {
            (sides.height.map { shape.outputSide($0) }, sides.width.map { shape.outputSide($0) })
        }
        var blockInput = sides
        for (unit, (conv, _, var shape)) in zip(units, named) {
            guard unit.kernel == shape.kernel, unit.stride == shape.stride else {
                throw notResNet("\(conv) (\(unit.node.label)) is \(unit.kernel)x\(unit.kernel) stride \(unit.stride), expected \(shape.kernel)x\(shape.kernel) stride \(shape.stride)")
            }
            if conv.hasSuffix(".conv1") || conv.hasSuffix(".downsample.0") { sides = blockInput }
            shape.samePadding = try usesSamePadding(unit.pads, shape, height: sides.height, width: sides.width,
                                                         label: "\(conv) (\(unit.node.label))")
            if shape.samePadding { network.samePadding.insert(conv) }
            let out = outputSides(shape, sides)
            if conv == "conv1" {
                var poolShape = architecture.maxPool
                poolShape.samePadding = try usesSamePadding(poolPads, poolShape, height: out.height, width: out.width,
                                                                 label: "the max pool (\(pool.label))")
                if poolShape.samePadding { network.samePadding.insert(ModelConfig.maxPoolName) }
                blockInput = outputSides(poolShape, out)
            } else if conv.hasSuffix(".conv1") {
                sides = out
            } else if conv.hasSuffix(".conv2") {
                blockInput = out
            }
        }
        for (unit, (conv, bn, _)) in zip(units, named) {
            network.state["\(conv).weight"] = Tensor(shape: unit.weight.dims, data: unit.weight.values)
            let channels = unit.outChannels
            if let b = unit.batchNorm {
                // Keep the model's epsilon: var + eps_file = var' + eps_model.
                let variance = b.variance.map { $0 + b.epsilon - network.epsilon }
                network.state["\(bn).weight"] = Tensor(shape: [channels], data: b.gamma)
                network.state["\(bn).bias"] = Tensor(shape: [channels], data: b.beta)
                network.state["\(bn).running_mean"] = Tensor(shape: [channels], data: b.mean)
                network.state["\(bn).running_var"] = Tensor(shape: [channels], data: variance)
            } else {
                // Folded: an identity BatchNorm carrying the conv's bias until calibration rebuilds it.
                network.state["\(bn).weight"] = Tensor(repeating: 1, shape: [channels])
                network.state["\(bn).bias"] = Tensor(shape: [channels], data: unit.bias ?? [Float](repeating: 0, count: channels))
                network.state["\(bn).running_mean"] = Tensor(zeros: [channels])
                network.state["\(bn).running_var"] = Tensor(repeating: 1 - network.epsilon, shape: [channels])
                network.foldedBatchNorms.append(bn)
            }
        }
        try classifier(after: x, into: &network)
        return network
    }

    /// One residual block starting at activation `x`: returns the blocks so far plus this one, and its output.
    private func block(from x: String, readers convs: [ONNXGraph.Node], blocks: [Block]) throws -> ([Block], String) {
        let position = "block \(blocks.count + 1)"
        if let bn = convs.first(where: { $0.opType == "BatchNormalization" }) {
            throw notTorchvision("pre-activation blocks: \(bn.label) and a Relu come before the convolutions of \(position) (ResNet v2), "
                                 + "where torchvision's BasicBlock normalises after each convolution")
        }
        for n in convs where !Self.supported.contains(n.opType) { throw fail("unsupported operator \(n.opType) (node '\(n.name)')") }
        // x feeds the main path's first conv, the downsample conv (if any) and the Add (identity shortcut).
        let convNodes = convs.filter { $0.opType == "Conv" }
        guard !convNodes.isEmpty, convs.count <= 3 else {
            throw notResNet("expected a residual block at \(position), found \(convs.map(\.label).joined(separator: ", "))")
        }
        var main: [ConvUnit] = [], shortcut: ConvUnit?
        var mainOutput = ""
        for node in convNodes {
            let unit = try convUnit(node)
            let after = readers(of: unit.output)
            if after.count == 1, after[0].opType == "Add" {
                shortcut = unit
                continue
            }
            // Main path: conv [BN] → Relu → conv [BN] … until the Add.
            var current = unit
            main = [unit]
            while true {
                let following = try next(current.output, after: current.node.label, expected: ["Relu", "Add"])
                if following.opType == "Add" { mainOutput = current.output; break }
                let conv = try next(following.outputs.first ?? "", after: following.label, expected: ["Conv"])
                current = try convUnit(conv)
                main.append(current)
                guard main.count <= 3 else { throw notResNet("a residual block of more than 3 convolutions at \(position)") }
            }
        }
        if main.count == 3 && main[0].kernel == 1 && main[2].kernel == 1 {
            throw fail("Bottleneck blocks: not ResNet-18 (1x1-3x3-1x1 residual blocks, as in ResNet-50)")
        }
        guard main.count == 2, main.allSatisfy({ $0.kernel == 3 }) else {
            throw notResNet("the residual block at \(position) has \(main.count) convolutions of \(main.map { "\($0.kernel)x\($0.kernel)" }.joined(separator: ", ")), expected two 3x3")
        }
        let add = try next(mainOutput, after: main[1].node.label, expected: ["Add"])
        let expectedShortcut = shortcut?.output ?? x
        guard add.inputs.count == 2, Set(add.inputs) == [mainOutput, expectedShortcut] || addReadsThroughIdentity(add, mainOutput, expectedShortcut) else {
            throw notResNet("\(add.label) does not add the block's input (or its downsample) to the block's output")
        }
        let output = try relu(after: add.outputs.first ?? "", add.label)
        return (blocks + [Block(conv1: main[0], conv2: main[1], downsample: shortcut)], output)
    }

    /// Whether the Add's inputs are the two values, allowing Identity nodes between.
    private func addReadsThroughIdentity(_ add: ONNXGraph.Node, _ a: String, _ b: String) -> Bool {
        var sources: [String: String] = [:]
        for node in computing where Self.passThrough.contains(node.opType) {
            if let out = node.outputs.first, let input = node.inputs.first { sources[out] = input }
        }
        func origin(_ v: String) -> String {
            var v = v, steps = 0
            while let s = sources[v], steps < computing.count { v = s; steps += 1 }
            return v
        }
        return Set(add.inputs.map(origin)) == [origin(a), origin(b)]
    }

    /// A Linear layer as ONNX writes it: Gemm, or MatMul + Add. Returns weight [out, in], bias, and its output.
    private func linear(_ node: ONNXGraph.Node) throws -> (weight: ONNXTensor, bias: [Float], output: String) {
        var weight = try constant(node, input: 1, "weight")
        guard weight.dims.count == 2, weight.dims.allSatisfy({ $0 > 0 }) else {
            throw notResNet("\(node.label) is not a classifier over the pooled features")
        }
        if node.opType == "Gemm" {
            guard (node.int("transA") ?? 0) == 0 else { throw notResNet("\(node.label) transposes its input") }
            if (node.int("transB") ?? 0) == 0 { weight = transposed(weight) }
            let alpha = node.attributes["alpha"]?.float ?? 1, beta = node.attributes["beta"]?.float ?? 1
            weight.values = weight.values.map { $0 * alpha }
            let outputs = weight.dims[0]
            var bias = [Float](repeating: 0, count: outputs)
            if node.inputs.count > 2 && !node.inputs[2].isEmpty {
                let c = try constant(node, input: 2, "bias")
                guard c.values.count == outputs || c.values.count == 1 else { throw fail("\(node.label): bias has \(c.values.count) values for \(outputs) outputs") }
                bias = c.values.count == outputs ? c.values.map { $0 * beta } : [Float](repeating: c.values[0] * beta, count: outputs)
            }
            return (weight, bias, node.outputs.first ?? "")
        }
        // MatMul(x, W[in, out]) then Add(bias)
        weight = transposed(weight)
        let add = try next(node.outputs.first ?? "", after: node.label, expected: ["Add"])
        guard let biasName = add.inputs.first(where: { constants[$0] != nil }), let b = constants[biasName],
              b.values.count == weight.dims[0] else {
            throw notResNet("\(add.label) does not add a bias of \(weight.dims[0]) values")
        }
        return (weight, b.values, add.outputs.first ?? "")
    }

    /// A BatchNormalization over [batch, features] (BatchNorm1d), its variance converted to the model's epsilon.
    private func batchNorm1d(_ node: ONNXGraph.Node, epsilon: Float) throws -> (params: [[Float]], output: String) {
        let values = try (1...4).map { try constant(node, input: $0, ["", "scale", "bias", "mean", "variance"][$0]).values }
        guard Set(values.map(\.count)).count == 1 else { throw fail("\(node.label): its parameters differ in length") }
        let fileEpsilon = node.attributes["epsilon"]?.float ?? 1e-5
        return ([values[0], values[1], values[2], values[3].map { $0 + fileEpsilon - epsilon }], node.outputs.first ?? "")
    }

    /// Pooling → optional flatten → the head: Gemm or MatMul + Add (torchvision's fc), or the seed's MLP head
    /// [BatchNormalization] Linear Relu [BatchNormalization] Linear, with BatchNorm1d kept or folded into the
    /// Linear layers (as export-onnx writes it; an identity BatchNorm1d is put in its place).
    private func classifier(after x: String, into network: inout ONNXNetwork) throws {
        let pool = try next(x, after: "the last block", expected: ["GlobalAveragePool", "ReduceMean", "AveragePool"])
        if pool.opType == "ReduceMean" {
            var axes = pool.ints("axes") ?? []
            if axes.isEmpty, pool.inputs.count > 1 { axes = try constant(pool, input: 1, "axes").values.compactMap { Int(exactly: $0) } }
            guard Set(axes.map { $0 < 0 ? $0 + 4 : $0 }) == [2, 3] else { throw notResNet("\(pool.label) averages over axes \(axes), expected the spatial axes") }
        }
        let layerOps: Set<String> = ["Gemm", "MatMul", "BatchNormalization", "Relu"]
        var value = pool.outputs.first ?? ""
        var node = try next(value, after: pool.label, expected: layerOps.union(["Flatten", "Reshape", "Squeeze"]))
        while ["Flatten", "Reshape", "Squeeze"].contains(node.opType) {
            value = node.outputs.first ?? ""
            node = try next(value, after: node.label, expected: layerOps.union(["Flatten", "Reshape", "Squeeze"]))
        }
        enum Layer { case linear(ONNXTensor, [Float]), batchNorm([[Float]]), relu }
        var layers: [Layer] = []
        var labels: [String] = []
        while true {
            guard layers.count < 16 else { throw notResNet("the classifier has more than 16 layers") }
            labels.append(node.label)
            switch node.opType {
            case "Gemm", "MatMul":
                let (w, b, out) = try linear(node)
                layers.append(.linear(w, b))
                value = out
            case "BatchNormalization":
                let (params, out) = try batchNorm1d(node, epsilon: network.epsilon)
                layers.append(.batchNorm(params))
                value = out
            default:
                layers.append(.relu)
                value = node.outputs.first ?? ""
            }
            let after = readers(of: value)
            if after.isEmpty { break }
            node = try next(value, after: node.label, expected: layerOps)
        }
        let kinds = layers.map { layer -> String in
            switch layer { case .linear: return "L"; case .batchNorm: return "B"; case .relu: return "R" }
        }.joined()
        let features = 8 * network.baseWidth
        func put(_ name: String, _ w: ONNXTensor, _ b: [Float]) {
            network.state["\(name).weight"] = Tensor(shape: w.dims, data: w.values)
            network.state["\(name).bias"] = Tensor(shape: [w.dims[0]], data: b)
        }
        func putBatchNorm(_ name: String, _ layer: Layer?, channels: Int) throws {
            if case .batchNorm(let p)? = layer {
                guard p[0].count == channels else { throw notResNet("the head's BatchNormalization before \(name == "head.bn1" ? "fc1" : "fc2") has \(p[0].count) channels, expected \(channels)") }
                for (suffix, values) in zip(["weight", "bias", "running_mean", "running_var"], p) {
                    network.state["\(name).\(suffix)"] = Tensor(shape: [channels], data: values)
                }
            } else {
                network.state["\(name).weight"] = Tensor(repeating: 1, shape: [channels])
                network.state["\(name).bias"] = Tensor(zeros: [channels])
                network.state["\(name).running_mean"] = Tensor(zeros: [channels])
                network.state["\(name).running_var"] = Tensor(repeating: 1 - network.epsilon, shape: [channels])
            }
        }
        let linears = layers.compactMap { layer -> (ONNXTensor, [Float])? in
            if case .linear(let w, let b) = layer { return (w, b) } else { return nil }
        }
        switch kinds {
        case "L":
            let (w, b) = linears[0]
            guard w.dims[1] == features else { throw notResNet("the classifier reads \(w.dims[1]) features, the backbone gives \(features)") }
            network.numClasses = w.dims[0]
            put("fc", w, b)
        case "LRL", "BLRL", "LRBL", "BLRBL":
            let (w1, b1) = linears[0], (w2, b2) = linears[1]
            guard w1.dims[1] == features, w2.dims[1] == w1.dims[0] else {
                throw notResNet("the head's Linear layers are \(describe(shape: w1.dims)) and \(describe(shape: w2.dims)) over \(features) features")
            }
            let index = kinds.firstIndex(of: "L").map { kinds.distance(from: kinds.startIndex, to: $0) } ?? 0
            try putBatchNorm("head.bn1", index > 0 ? layers[0] : nil, channels: features)
            put("head.fc1", w1, b1)
            try putBatchNorm("head.bn2", kinds.hasSuffix("BL") ? layers[layers.count - 2] : nil, channels: w1.dims[0])
            put("head.fc2", w2, b2)
            network.head = .mlp
            network.hiddenUnits = w1.dims[0]
            network.numClasses = w2.dims[0]
            let folded = [index == 0 ? "before fc1" : nil, kinds.hasSuffix("BL") ? nil : "before fc2"].compactMap { $0 }
            network.headNotes.append("the seed's MLP head (\(labels.joined(separator: ", ")))"
                + (folded.isEmpty ? "" : "; no BatchNorm1d \(folded.joined(separator: " and ")) (folded into the Linear layers in the file): identity BatchNorm1d put there"))
        default:
            throw notResNet("the classifier is \(labels.joined(separator: " → ")): neither a Linear nor the seed's MLP head "
                            + "([BatchNorm1d] Linear ReLU [BatchNorm1d] Linear)")
        }
    }

    private func transposed(_ t: ONNXTensor) -> ONNXTensor {
        let rows = t.dims[0], cols = t.dims[1]
        var out = [Float](repeating: 0, count: t.values.count)
        for r in 0..<rows { for c in 0..<cols { out[c * rows + r] = t.values[r * cols + c] } }
        return ONNXTensor(dims: [cols, rows], values: out)
    }
}
