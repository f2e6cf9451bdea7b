import Foundation

/// Fresh parameters the way PyTorch/torchvision initialise them (own seeded generator, so values differ
/// from PyTorch's but follow the same distributions).
public enum ParameterInitialization {
    /// A new head: Linear weight and bias ~ U(±1/√fan_in) (nn.Linear's default), BatchNorm weight 1, bias 0,
    /// running mean 0, running var 1, counter 0.
    public static func head(_ architecture: Architecture, rng: inout SplitMix64) -> StateDict {
        initialize(architecture.headSpecs, rng: &rng)
    }

    /// A whole random network: convolutions Kaiming-normal (fan_out, ReLU) as torchvision does, the rest as
    /// in `head`. For benchmarks and tests; real runs start from imported weights.
    public static func model(_ architecture: Architecture, rng: inout SplitMix64) -> StateDict {
        initialize(architecture.parameterSpecs, rng: &rng)
    }

    static func initialize(_ specs: [ParameterSpec], rng: inout SplitMix64) -> StateDict {
        var state: StateDict = [:]
        var fanIn: [String: Int] = [:]
        for spec in specs where spec.role == .weight && spec.shape.count == 2 { fanIn[String(spec.name.dropLast(7))] = spec.shape[1] }
        for spec in specs {
            let count = spec.shape.reduce(1, *)
            var data = [Float](repeating: 0, count: count)
            let layer = String(spec.name[..<(spec.name.lastIndex(of: ".") ?? spec.name.endIndex)])
            switch spec.role {
            case .weight where spec.shape.count == 4:
                let std = (2 / Double(spec.shape[0] * spec.shape[2] * spec.shape[3])).squareRoot()
                for i in 0..<count { data[i] = Float(rng.nextStandardNormal() * std) }
            case .weight where spec.shape.count == 2, .bias where fanIn[layer] != nil:
                let bound = 1 / Float(fanIn[layer] ?? 1).squareRoot()
                for i in 0..<count { data[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
            case .weight, .runningVar:
                data = [Float](repeating: 1, count: count)
            case .bias, .runningMean, .counter:
                break
            }
            state[spec.name] = Tensor(shape: spec.shape, data: data)
        }
        return state
    }
}
