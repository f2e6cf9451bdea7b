import Foundation

/// A validation figure that says how good an epoch is.
public enum MonitoredFigure: String, Codable, Sendable, CaseIterable {
    case validationLoss = "val_loss", validationAccuracy = "val_acc", validationAUC = "val_auc"

    public var higherIsBetter: Bool { self != .validationLoss }

    /// Strictly better (as Keras' callbacks with min_delta 0): a tie keeps the earlier epoch. NaN is never better.
    public func isBetter(_ value: Double, than reference: Double?) -> Bool {
        guard !value.isNaN else { return false }
        guard let reference else { return true }
        return higherIsBetter ? value > reference : value < reference
    }
}

/// Best-epoch tracking and early stopping over a run of training phases (Keras' ModelCheckpoint(save_best_only)
/// and EarlyStopping, as one value that a checkpoint can carry so a resumed run continues it).
/// The best is over the whole run: it is what a "keep the best" checkpoint holds. Patience counts within a phase:
/// every phase starts afresh, so fine-tuning gets its epochs even when the head phase's best is hard to beat.
public struct TrainingMonitor: Codable, Equatable, Sendable {
    public var figure: MonitoredFigure
    /// The run's best value so far and where it was reached (phase index, epochs done in that phase).
    public private(set) var best: Double?
    public private(set) var bestPhase: Int?
    public private(set) var bestEpoch: Int?
    /// The current phase's best and the epochs since it last improved.
    public private(set) var phaseBest: Double?
    public private(set) var epochsWithoutImprovement = 0
    /// Phases that early stopping ended.
    public private(set) var stoppedPhases: [Int] = []

    public init(figure: MonitoredFigure) { self.figure = figure }

    /// A new phase: its own best and patience.
    public mutating func startPhase() {
        phaseBest = nil
        epochsWithoutImprovement = 0
    }

    /// Records the figure of epoch `epoch` (1-based) of phase `phase`; returns true when it is the run's best so far.
    @discardableResult
    public mutating func record(_ value: Double, phase: Int, epoch: Int) -> Bool {
        if figure.isBetter(value, than: phaseBest) {
            phaseBest = value
            epochsWithoutImprovement = 0
        } else {
            epochsWithoutImprovement += 1
        }
        guard figure.isBetter(value, than: best) else { return false }
        best = value
        bestPhase = phase
        bestEpoch = epoch
        return true
    }

    /// True when the phase has gone `patience` epochs without improving on its best.
    public func shouldStop(patience: Int?) -> Bool {
        guard let patience else { return false }
        return epochsWithoutImprovement >= patience
    }

    public mutating func markStopped(phase: Int) {
        if !stoppedPhases.contains(phase) { stoppedPhases.append(phase) }
    }
}
