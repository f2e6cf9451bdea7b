import Foundation

/// The learning-rate range test (Smith 2015; fastai's `lr_find`): one batch per step at a learning rate growing
/// exponentially from `startLR` to `endLR`, the loss smoothed by an exponential moving average with bias
/// correction, stopped once the smoothed loss exceeds `divergenceFactor` times its minimum (or is not finite).
/// This type holds the schedule, the record and the suggestions; the caller runs the steps.
public struct LearningRateRangeTest: Sendable {
    public let startLR: Double, endLR: Double, steps: Int
    /// Smoothing factor of the moving average (fastai: 0.98).
    public var beta: Double
    public var divergenceFactor: Double
    public private(set) var learningRates: [Double] = []
    public private(set) var losses: [Double] = []
    public private(set) var smoothedLosses: [Double] = []
    /// Why the test ended early, if it did.
    public private(set) var stopReason: String?
    private var average = 0.0

    public init(startLR: Double, endLR: Double, steps: Int, beta: Double = 0.98, divergenceFactor: Double = 4) {
        precondition(startLR > 0 && endLR > startLR && steps >= 2, "invalid range test")
        self.startLR = startLR
        self.endLR = endLR
        self.steps = steps
        self.beta = beta
        self.divergenceFactor = divergenceFactor
    }

    /// The learning rate of step `step` (0-based): startLR · (endLR / startLR)^(step / (steps − 1)).
    public func learningRate(at step: Int) -> Double {
        startLR * pow(endLR / startLR, Double(step) / Double(steps - 1))
    }

    /// The learning rate for the next step, nil once the test has ended.
    public var nextLearningRate: Double? {
        stopReason == nil && learningRates.count < steps ? learningRate(at: learningRates.count) : nil
    }

    /// Records the loss of the step just taken at `nextLearningRate`.
    public mutating func record(loss: Double) {
        guard let lr = nextLearningRate else { preconditionFailure("the range test has ended") }
        let minimum = smoothedLosses.min()
        average = beta * average + (1 - beta) * loss
        let smoothed = average / (1 - pow(beta, Double(losses.count + 1)))
        learningRates.append(lr)
        losses.append(loss)
        smoothedLosses.append(smoothed)
        if !smoothed.isFinite {
            stopReason = "the loss is not finite"
        } else if let minimum, smoothed > divergenceFactor * minimum {
            stopReason = "the smoothed loss exceeds \(divergenceFactor.formatted()) times its minimum"
        }
    }

    public struct Suggestion: Equatable, Sendable {
        /// Where the smoothed loss falls fastest against log(lr).
        public var steepest: Double
        /// Where the smoothed loss is lowest, and a tenth of it (fastai's "minimum / 10").
        public var minimum: Double
        public var minimumOverTen: Double { minimum / 10 }
    }

    /// Suggestions from the recorded curve, leaving out (as fastai does) the first tenth of the steps, where the
    /// average is still settling, and the last five, where the loss diverges; nil with fewer than 3 points.
    public func suggestion() -> Suggestion? {
        var range = (steps / 10)..<(smoothedLosses.count - 5)
        if range.count < 3 { range = 0..<smoothedLosses.count }
        guard range.count >= 3 else { return nil }
        let s = smoothedLosses, lr = learningRates
        guard let lowest = range.min(by: { s[$0] < s[$1] }) else { return nil }
        let slopes = range.dropLast().map { i in (i, (s[i + 1] - s[i]) / (log(lr[i + 1]) - log(lr[i]))) }
        guard let steepest = slopes.filter({ $0.1.isFinite }).min(by: { $0.1 < $1.1 }) else { return nil }
        return Suggestion(steepest: lr[steepest.0], minimum: lr[lowest])
    }
}

extension Double {
    /// Shortest form for messages: 4 for 4.0.
    fileprivate func formatted() -> String { self == rounded() ? String(Int(self)) : String(self) }
}
