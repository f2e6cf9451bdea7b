import Foundation
import ResNetFormats
import ResNetModel
import XCTest

/// PyTorch's training reference (`training_reference.safetensors`, see the reference README): the seed's MLP head
/// on the seeded ResNet-18, dropout 0, one batch of 16 images at 49x49, with its step-0 figures and trajectories.
public struct TrainingReference {
    public var tensors: [String: SafeTensors.Entry]
    /// The starting state: the reference backbone (counters at 0) and the reference's initial head.
    public var state: StateDict
    /// The batch, NHWC.
    public var images: [Float]
    public var labels: [Int]
    public let config = ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 256, dropout: 0)

    /// A reference tensor; skips the test when the file lacks it.
    public func tensor(_ name: String) throws -> [Float] {
        guard let entry = tensors[name] else { throw XCTSkip("reference tensor \(name) missing") }
        return entry.data
    }

    /// A fresh trainable model at the starting state.
    public func model() throws -> TrainableResNet {
        try TrainableResNet(architecture: Architecture(config), state: state)
    }

    nonisolated(unsafe) private static var cached: TrainingReference?

    /// Loaded once per test process.
    public static func load() throws -> TrainingReference {
        if let cached { return cached }
        let (tensors, _) = try SafeTensors.read(path: TestPaths.reference.appendingPathComponent("training_reference.safetensors").path)
        var state: StateDict = [:]
        let checkpoint = try Checkpoint.load(path: TestPaths.reference.appendingPathComponent("resnet18.safetensors").path)
        for (name, tensor) in checkpoint.state where !name.hasPrefix("fc.") {
            // The reference's backbone counters start at 0.
            state[name] = name.hasSuffix("num_batches_tracked") ? Tensor(shape: [], data: [0]) : tensor
        }
        for (name, entry) in tensors where name.hasPrefix("init/") {
            state[String(name.dropFirst(5))] = Tensor(shape: entry.shape, data: entry.data)
        }
        let images = nhwc(fromNCHW: tensors["x"]!.data, batch: 16, channels: 3, height: 49, width: 49)
        let reference = TrainingReference(tensors: tensors, state: state, images: images, labels: tensors["y"]!.data.map { Int($0) })
        cached = reference
        return reference
    }
}
