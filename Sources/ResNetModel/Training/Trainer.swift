/// One phase of the seed recipe, epoch by epoch: before each step OneCycleLR sets AdamW's learning rate and
/// beta1, then the batch goes forward and backward and AdamW steps. The epoch's figures are the seed's: loss and
/// accuracy averaged over the last 5 % of its steps. No I/O here: the caller fills each batch (decoding,
/// augmentation) and hears of each step (history, progress).
public final class Trainer {
    /// What one step did, with the moving averages so far.
    public struct Step: Sendable {
        public var index: Int
        public var loss: Float, accuracy: Float
        public var averageLoss: Float, averageAccuracy: Float
    }

    /// A loss that is NaN or infinite: the step, the loss and the learning rate in force.
    public struct Divergence: Error {
        public var step: Int
        public var loss: Float
        public var learningRate: Double
    }

    public let model: TrainableResNet
    public let optimizer: AdamW
    public let schedule: OneCycleSchedule
    public let stepsPerEpoch: Int

    public init(model: TrainableResNet, optimizer: AdamW, schedule: OneCycleSchedule, stepsPerEpoch: Int) {
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.stepsPerEpoch = stepsPerEpoch
    }

    /// Epoch `epoch` of the phase. `fill(step, images)` writes that step's NHWC batch of `side`x`side` images into
    /// `images` and returns their labels. Throws `Divergence` before stepping on a non-finite loss (the
    /// parameters then hold the previous step's values). Returns the epoch's averaged loss and accuracy.
    public func runEpoch(_ epoch: Int, side: Int, images: UnsafeMutablePointer<Float>,
                         fill: (_ step: Int, _ images: UnsafeMutablePointer<Float>) -> [Int],
                         onStep: (Step) -> Void) throws -> (loss: Float, accuracy: Float) {
        var losses: [Float] = [], accuracies: [Float] = []
        let window = max(1, Int((0.05 * Double(stepsPerEpoch)).rounded()))
        func average(_ values: [Float]) -> Float { values.suffix(window).reduce(0, +) / Float(min(window, values.count)) }
        for step in 0..<stepsPerEpoch {
            (optimizer.lr, optimizer.beta1) = schedule.values(at: epoch * stepsPerEpoch + step)
            let labels = fill(step, images)
            let logits = model.forward(images: images, count: labels.count, height: side, width: side, training: true)
            let correct = Self.correctCount(logits, labels: labels, classes: model.numClasses)
            let loss = model.backward(labels: labels)
            guard loss.isFinite else { throw Divergence(step: step, loss: loss, learningRate: optimizer.lr) }
            optimizer.step()
            losses.append(loss)
            accuracies.append(Float(correct) / Float(labels.count))
            onStep(Step(index: step, loss: loss, accuracy: accuracies.last!, averageLoss: average(losses),
                        averageAccuracy: average(accuracies)))
        }
        return (average(losses), average(accuracies))
    }

    /// How many rows of `logits` [labels.count, classes] predict their label (PyTorch's argmax on ties).
    public static func correctCount(_ logits: UnsafePointer<Float>, labels: [Int], classes: Int) -> Int {
        var correct = 0
        for (n, label) in labels.enumerated() where argmax(UnsafeBufferPointer(start: logits + n * classes, count: classes)) == label {
            correct += 1
        }
        return correct
    }
}
