/// What a named tensor is for; decides how it is trained and how it is stored on disk.
public enum ParameterRole: Sendable, Equatable {
    case weight, bias
    /// BatchNorm running statistics: buffers, updated in training mode, not by the optimizer.
    case runningMean, runningVar
    /// BatchNorm's `num_batches_tracked`: an int64 scalar in PyTorch files.
    case counter

    public var isTrainable: Bool { self == .weight || self == .bias }
}

/// One entry of the model's state dict, named as torchvision names it.
public struct ParameterSpec: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var role: ParameterRole
}

/// Named tensors, in torchvision's naming (`layer2.0.downsample.1.running_var`).
public typealias StateDict = [String: Tensor]

/// A state dict that does not fit the architecture: names what is missing, extra or misshapen.
public struct StateDictError: Error, CustomStringConvertible, Equatable {
    public var problems: [String]
    public var description: String {
        let shown = problems.prefix(5).joined(separator: "; ")
        return problems.count > 5 ? "\(shown); and \(problems.count - 5) more" : shown
    }
}

extension Architecture {
    static func batchNormSpecs(_ prefix: String, _ channels: Int) -> [ParameterSpec] {
        [ParameterSpec(name: "\(prefix).weight", shape: [channels], role: .weight),
         ParameterSpec(name: "\(prefix).bias", shape: [channels], role: .bias),
         ParameterSpec(name: "\(prefix).running_mean", shape: [channels], role: .runningMean),
         ParameterSpec(name: "\(prefix).running_var", shape: [channels], role: .runningVar),
         ParameterSpec(name: "\(prefix).num_batches_tracked", shape: [], role: .counter)]
    }

    static func linearSpecs(_ prefix: String, _ inputs: Int, _ outputs: Int) -> [ParameterSpec] {
        [ParameterSpec(name: "\(prefix).weight", shape: [outputs, inputs], role: .weight),
         ParameterSpec(name: "\(prefix).bias", shape: [outputs], role: .bias)]
    }

    /// The backbone's tensors (everything but the head), in torchvision's order.
    public var backboneSpecs: [ParameterSpec] {
        namedConvolutions.flatMap { conv, bn, shape in
            [ParameterSpec(name: "\(conv).weight", shape: shape.weightShape, role: .weight)]
                + Self.batchNormSpecs(bn, shape.outChannels)
        }
    }

    /// The head's tensors: `fc.*` for the linear head, `head.{bn1,fc1,bn2,fc2}.*` for the MLP head.
    public var headSpecs: [ParameterSpec] {
        let features = config.featureWidth, classes = config.numClasses
        switch config.head {
        case .linear:
            return Self.linearSpecs("fc", features, classes)
        case .mlp:
            let hidden = config.hiddenUnits
            return Self.batchNormSpecs("head.bn1", features) + Self.linearSpecs("head.fc1", features, hidden)
                + Self.batchNormSpecs("head.bn2", hidden) + Self.linearSpecs("head.fc2", hidden, classes)
        }
    }

    /// Every tensor of the state dict, in order.
    public var parameterSpecs: [ParameterSpec] { backboneSpecs + headSpecs }

    /// Number of trainable scalars (what torchinfo calls parameters).
    public var trainableParameterCount: Int {
        parameterSpecs.filter { $0.role.isTrainable }.reduce(0) { $0 + $1.shape.reduce(1, *) }
    }

    /// Checks names and shapes, listing every problem as `name: expected [..], got [..]`.
    /// `num_batches_tracked` may be absent (Keras and ONNX files have none).
    public func validate(_ state: StateDict) throws { try validate(state, against: parameterSpecs) }

    /// The same against some of the specs (`backboneSpecs` for a plan without a head).
    func validate(_ state: StateDict, against specs: [ParameterSpec]) throws {
        var problems: [String] = []
        for spec in specs {
            guard let tensor = state[spec.name] else {
                if spec.role != .counter { problems.append("\(spec.name): missing") }
                continue
            }
            let shapeMatches = tensor.shape == spec.shape || (spec.shape.isEmpty && tensor.count == 1)
            if !shapeMatches {
                problems.append("\(spec.name): expected \(describe(shape: spec.shape)), got \(describe(shape: tensor.shape))")
            }
        }
        let known = Set(specs.map(\.name))
        for name in state.keys.sorted() where !known.contains(name) {
            problems.append("\(name): unexpected tensor")
        }
        if !problems.isEmpty { throw StateDictError(problems: problems) }
    }
}
