import Foundation
import ResNetData
import ResNetFormats
import ResNetModel
import ResNetSupport

/// Validation figures of one epoch: the classification metrics and, for two classes, ROC AUC from P(class 1).
struct ValidationFigures {
    var metrics: ClassificationMetrics
    /// nil unless two classes, both present in the validation images.
    var rocAUC: Double?
    var loss: Double { metrics.loss }
    var accuracy: Double { metrics.accuracy }

    init(logits: [Float], labels: [Int], classes: Int) {
        metrics = ClassificationMetrics(logits: logits, labels: labels, classes: classes)
        rocAUC = classes == 2 ? BinaryCurves(scores: positiveProbabilities(logits), positive: labels.map { $0 == 1 })?.rocAUC : nil
    }

    /// The monitored figure; NaN when undefined (AUC with one class absent), which never counts as an improvement.
    func value(_ figure: MonitoredFigure) -> Double {
        switch figure {
        case .validationLoss: return loss
        case .validationAccuracy: return accuracy
        case .validationAUC: return rocAUC ?? .nan
        }
    }
}

/// --monitor, --keep, --early-stop and --class-weights: what fine-tune records about them in the checkpoint.
extension FineTune {
    static let monitorKey = "resnetkit.fine-tune.monitor"
    static let classWeightsKey = "resnetkit.fine-tune.class-weights"
    /// In the optimizer sidecar with --keep best: the last epoch's weights (the checkpoint holds the best ones).
    static let lastModelPrefix = "model/"

    /// The checkpoint's record of the monitored figure.
    struct MonitorRecord: Codable, Equatable {
        var monitor: MonitoredFigure
        var keep: String
        var earlyStop: Int?
        var tracker: TrainingMonitor
        /// The epoch whose weights the checkpoint holds (phase and epoch 1-based) and its monitored value
        /// (nil without validation or when the figure is undefined).
        var phase: Int
        var epoch: Int
        var value: Double?
    }

    func validateMonitoring() throws {
        if let earlyStop, earlyStop < 1 { throw UsageError("--early-stop must be at least 1") }
        if validDir == nil && training.validFraction == 0 && (keep == .best || earlyStop != nil) {
            throw UsageError("--keep best and --early-stop need validation images (--valid-fraction above 0, or --valid-dir)")
        }
    }

    /// The run's monitor: a fresh one, or the resumed checkpoint's (which must have been made with the same options).
    func startMonitor(resumed checkpoint: Checkpoint?, classNames: [String]) throws -> TrainingMonitor {
        if monitor == .valAUC && classNames.count != 2 {
            throw UsageError("--monitor val_auc needs two classes; the labels have \(classNames.count)")
        }
        let fresh = TrainingMonitor(figure: monitor.figure)
        guard let checkpoint, let text = checkpoint.extra[Self.monitorKey] else { return fresh }
        guard let record = try? JSONDecoder().decode(MonitorRecord.self, from: Data(text.utf8)) else {
            throw FileError(out, "its \(Self.monitorKey) metadata is not readable")
        }
        guard record.monitor == monitor.figure, record.keep == keep.rawValue, record.earlyStop == earlyStop else {
            let then = "--monitor \(record.monitor.rawValue) --keep \(record.keep)" + (record.earlyStop.map { " --early-stop \($0)" } ?? "")
            throw UsageError("\(out) was trained with \(then); resume with the same options")
        }
        return record.tracker
    }

    /// The training loss's class weights (printed), checked against the resumed checkpoint's.
    func lossWeights(trainingLabels: [Int], classNames: [String], resumed checkpoint: Checkpoint?) throws -> [Float]? {
        let weights = try training.classWeights.weights(trainingLabels: trainingLabels, classNames: classNames)
        if let checkpoint {
            let stored = checkpoint.extra[Self.classWeightsKey]
            guard stored == weights.map(Self.encode) else {
                throw UsageError("\(out) was trained with class weights \(stored ?? "none"); resume with the same --class-weights")
            }
        }
        if let weights {
            Console.info("fine-tune: class weights (loss) \(String(classWeights: weights, classNames: classNames))")
        }
        return weights
    }

    static func encode(_ weights: [Float]) -> String { weights.map { "\($0)" }.joined(separator: ",") }

    static func encode(_ record: MonitorRecord) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(record), as: UTF8.self)
    }

    /// The last weights saved beside the optimizer state (--keep best).
    static func lastModelState(sidecar path: String) throws -> StateDict {
        let (tensors, _) = try SafeTensors.read(path: path)
        var state: StateDict = [:]
        for (name, entry) in tensors where name.hasPrefix(lastModelPrefix) {
            state[String(name.dropFirst(lastModelPrefix.count))] = Tensor(shape: entry.shape, data: entry.data)
        }
        guard !state.isEmpty else { throw FileError(path, "holds no weights of the last epoch to resume from") }
        return state
    }

    static func lastModelTensors(_ state: StateDict) -> [(name: String, shape: [Int], data: [Float])] {
        state.keys.sorted().map { (lastModelPrefix + $0, state[$0]!.shape, state[$0]!.data) }
    }
}
