import Foundation
import ResNetModel

/// Arithmetic of the inference engine: fp32 on OpenBLAS (`InferencePlan`, the default), bf16 or int8 on oneDNN.
public enum Precision: String, CaseIterable, Sendable {
    case fp32, bf16, int8

    /// The engine for this precision; `workSaving` as `DNNLPlan` takes it (bf16's Winograd and by-taps layers).
    public func makeEngine(architecture: Architecture, state: StateDict, scales: ActivationScales?,
                           workSaving: Bool? = nil) throws -> any InferenceEngine {
        switch self {
        case .fp32: return try InferencePlan(architecture: architecture, state: state)
        case .bf16, .int8:
            return try DNNLPlan(architecture: architecture, state: state, precision: self, scales: scales, workSaving: workSaving)
        }
    }
}

/// Per-tensor activation ranges for int8 inference, measured by `resnetkit quantize` on calibration images:
/// the input's largest |value| and, for every convolution layer (named by its BatchNorm, as `LayerObservation`
/// names them), the largest value of its output (after bias, residual and ReLU) that quantisation keeps.
/// Kept in a checkpoint's metadata under `metadataKey` as JSON.
public struct ActivationScales: Codable, Equatable, Sendable {
    public static let metadataKey = "int8_activation_ranges"

    public var input: Float
    public var maxima: [String: Float]
    /// How the ranges were chosen, e.g. `percentile 99.99 over 512 images`.
    public var method: String

    public init(input: Float, maxima: [String: Float], method: String) {
        self.input = input
        self.maxima = maxima
        self.method = method
    }

    public init(json: String) throws {
        self = try JSONDecoder().decode(Self.self, from: Data(json.utf8))
    }

    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }
}
