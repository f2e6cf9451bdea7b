import Foundation
import ResNetModel
import ResNetSupport

/// The values a model file states that the arithmetic relies on, checked before a network is built from them:
/// sizes within `Limits` (so nothing overflows or allocates absurdly), BatchNorm epsilon > 0 and running
/// variances ≥ 0 (otherwise every logit is NaN or every image gets the same one), a crop the network can take.
public enum ModelValidation {
    /// Checks the configuration and preprocessing (before the architecture is built).
    public static func check(config: ModelConfig, preprocessing: Preprocessing, path: String) throws {
        func within(_ value: Int, _ range: ClosedRange<Int>, _ what: String) throws {
            guard range.contains(value) else {
                throw FileError(path, "\(what) is \(value), outside \(range.lowerBound)…\(range.upperBound)")
            }
        }
        try within(config.numClasses, Limits.classes, "the class count")
        try within(config.baseWidth, Limits.baseWidth, "the base width")
        try within(config.hiddenUnits, Limits.hiddenUnits, "the head's hidden width")
        guard config.batchNormEpsilon.isFinite, config.batchNormEpsilon > 0 else {
            throw FileError(path, "BatchNorm epsilon is \(config.batchNormEpsilon); it must be positive")
        }
        guard config.dropout.isFinite, (0..<1).contains(config.dropout) else {
            throw FileError(path, "dropout is \(config.dropout); it must be in [0, 1)")
        }
        try within(preprocessing.crop, Limits.crop, "the preprocessing crop")
        guard preprocessing.crop == 0 || preprocessing.crop >= ModelConfig.minimumInputSide else {
            throw FileError(path, "the preprocessing crop is \(preprocessing.crop); it must be 0 (none) or at least \(ModelConfig.minimumInputSide)")
        }
    }

    /// Checks the tensors' values: all finite, running variances ≥ 0.
    public static func check(state: StateDict, path: String) throws {
        for name in state.keys.sorted() {
            guard let tensor = state[name] else { continue }
            if !tensor.data.allSatisfy(\.isFinite) { throw FileError(path, "tensor \(name) holds NaN or infinite values") }
            if name.hasSuffix("running_var"), let bad = tensor.data.first(where: { $0 < 0 }) {
                throw FileError(path, "tensor \(name) holds a negative variance (\(bad))")
            }
        }
    }
}
