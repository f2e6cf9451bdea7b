import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// Weighted cross-entropy against PyTorch's `CrossEntropyLoss(weight=w)` (fixtures/class_weights_reference.safetensors,
/// made by tools/make_class_weights_reference.py): a width-4 ResNet-18 with the MLP head, 3 classes, 6 images at
/// 40x40 in train mode, the whole model trainable.
final class ClassWeightsReferenceTests: XCTestCase {
    func testWeightedLossAndEveryGradientMatchPyTorch() throws {
        let path = TestPaths.fixtures.appendingPathComponent("class_weights_reference.safetensors").path
        let (tensors, _) = try SafeTensors.read(path: path)
        func tensor(_ name: String) throws -> [Float] { try XCTUnwrap(tensors[name], "reference tensor \(name)").data }
        var state: StateDict = [:]
        for (name, entry) in tensors where name.hasPrefix("init/") {
            state[String(name.dropFirst(5))] = Tensor(shape: entry.shape, data: entry.data)
        }
        let config = ModelConfig(numClasses: 3, head: .mlp, hiddenUnits: 16, dropout: 0, baseWidth: 4)
        let images = nhwc(fromNCHW: try tensor("x"), batch: 6, channels: 3, height: 40, width: 40)
        let labels = try tensor("y").map { Int($0) }
        let weights = try tensor("weights")
        XCTAssertEqual(weights, [0.4, 2.5, 1.3])

        let model = try TrainableResNet(architecture: Architecture(config), state: state)
        let plain = model.forward(images: images, count: 6, height: 40, width: 40, training: true)
        let unweighted = model.backward(labels: labels)
        XCTAssertEqual(unweighted, try tensor("unweighted_loss")[0], accuracy: 1e-5 * abs(unweighted))

        model.classWeights = weights
        let logits = model.forward(images: images, count: 6, height: 40, width: 40, training: true)
        XCTAssertEqual(logits, plain, "the weights change the loss, not the forward pass")
        let loss = model.backward(labels: labels)
        let reference = try tensor("loss")[0]
        XCTAssertLessThan(relativeError(logits, try tensor("logits")), 1e-5, "logits")
        let lossError = abs(loss - reference) / abs(reference)
        XCTAssertLessThan(lossError, 1e-5, "weighted loss \(loss), PyTorch \(reference)")
        XCTAssertGreaterThan(abs(loss - unweighted), 1e-2, "the weights make a difference on this batch")

        let gradients = model.gradients()
        let names = tensors.keys.filter { $0.hasPrefix("grad/") }
        XCTAssertEqual(names.count, model.parameters.count, "one reference gradient per parameter")
        var worst: (String, Float) = ("", 0)
        for name in names {
            let parameter = String(name.dropFirst(5))
            let mine = try XCTUnwrap(gradients[parameter], "no gradient for \(parameter)")
            let error = relativeError(mine, try tensor(name))
            XCTAssertLessThan(error, 1e-4, parameter)
            if error > worst.1 { worst = (parameter, error) }
        }
        print("class weights: loss rel. error \(lossError), worst gradient \(worst.0) \(worst.1)")
    }

    func testBalancedWeightsAreNOverKTimesClassCount() {
        // 6 images: 3 of class 0, 2 of class 1, 1 of class 2 → 6/(3·3), 6/(3·2), 6/(3·1).
        let weights = ClassWeights.balanced(labels: [0, 1, 0, 2, 1, 0], classes: 3)
        XCTAssertEqual(weights?.count, 3)
        for (w, expected) in zip(weights ?? [], [2.0 / 3, 1, 2] as [Float]) { XCTAssertEqual(w, expected, accuracy: 1e-7) }
        XCTAssertNil(ClassWeights.balanced(labels: [0, 0, 1], classes: 3), "a class without images has no finite weight")
    }
}
