import ArgumentParser
import ResNetModel

/// `fine-tune --monitor`: the validation figure that decides the best epoch and early stopping.
enum MonitorChoice: String, ExpressibleByArgument, CaseIterable {
    case valLoss = "val_loss", valAcc = "val_acc", valAUC = "val_auc"

    var figure: MonitoredFigure {
        switch self {
        case .valLoss: return .validationLoss
        case .valAcc: return .validationAccuracy
        case .valAUC: return .validationAUC
        }
    }
}

/// `fine-tune --keep`: which epoch's weights the checkpoint holds.
enum KeepChoice: String, ExpressibleByArgument, CaseIterable {
    case last, best
}

/// `fine-tune --class-weights none|balanced|W0,W1,…`.
enum ClassWeighting: ExpressibleByArgument, Equatable {
    case none, balanced
    case explicit([Float])

    init?(argument: String) {
        switch argument {
        case "none": self = .none
        case "balanced": self = .balanced
        default:
            let values = argument.split(separator: ",", omittingEmptySubsequences: false).map { Float($0.trimmingCharacters(in: .whitespaces)) }
            // Positive weights only: a zero weight would make a batch of that class alone 0 / 0.
            guard values.count >= 2, values.allSatisfy({ $0 != nil && $0! > 0 && $0!.isFinite }) else { return nil }
            self = .explicit(values.map { $0! })
        }
    }

    var defaultValueDescription: String {
        switch self {
        case .none: return "none"
        case .balanced: return "balanced"
        case .explicit(let w): return w.map { "\($0)" }.joined(separator: ",")
        }
    }

    /// The weights for `classes` classes given the training labels; throws a usage error when they do not fit.
    func weights(trainingLabels: [Int], classNames: [String]) throws -> [Float]? {
        switch self {
        case .none: return nil
        case .balanced:
            guard let weights = ClassWeights.balanced(labels: trainingLabels, classes: classNames.count) else {
                throw UsageError("--class-weights balanced: some class has no training image")
            }
            return weights
        case .explicit(let weights):
            guard weights.count == classNames.count else {
                throw UsageError("--class-weights gives \(weights.count) weights for \(classNames.count) classes (\(classNames.joined(separator: ", ")))")
            }
            return weights
        }
    }
}

extension String {
    init(classWeights weights: [Float], classNames: [String]) {
        self = zip(classNames, weights).map { "\($0.0): " + String(format: "%.4g", $0.1) }.joined(separator: ", ")
    }
}
