import Foundation

/// Classification figures from logits and true labels.
public struct ClassificationMetrics: Equatable, Sendable {
    /// Mean cross-entropy.
    public var loss: Double
    public var accuracy: Double
    /// confusion[true][predicted].
    public var confusion: [[Int]]
    public var precision: [Double], recall: [Double], f1: [Double]

    /// logits [labels.count, classes].
    public init(logits: [Float], labels: [Int], classes: Int) {
        precondition(logits.count == labels.count * classes && !labels.isEmpty)
        var total = 0.0, correct = 0
        var confusion = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
        for (n, label) in labels.enumerated() {
            let row = logits[(n * classes)..<((n + 1) * classes)]
            total += logSumExp(row) - Double(row[row.startIndex + label])
            let predicted = argmax(row)
            confusion[label][predicted] += 1
            if predicted == label { correct += 1 }
        }
        loss = total / Double(labels.count)
        accuracy = Double(correct) / Double(labels.count)
        self.confusion = confusion
        precision = []; recall = []; f1 = []
        for k in 0..<classes {
            let tp = Double(confusion[k][k])
            let predicted = Double((0..<classes).reduce(0) { $0 + confusion[$1][k] })
            let actual = Double(confusion[k].reduce(0, +))
            let p = predicted > 0 ? tp / predicted : 0, r = actual > 0 ? tp / actual : 0
            precision.append(p); recall.append(r); f1.append(p + r > 0 ? 2 * p * r / (p + r) : 0)
        }
    }
}

/// Threshold curves of a binary scorer (score = evidence for the positive class).
public struct BinaryCurves: Equatable, Sendable {
    /// ROC points (false positive rate, true positive rate) from (0, 0) to (1, 1).
    public var roc: [(x: Double, y: Double)]
    /// Precision–recall points (recall, precision), recall increasing.
    public var precisionRecall: [(x: Double, y: Double)]
    /// Area under the ROC curve (ties count one half, as scikit-learn's roc_auc_score).
    public var rocAUC: Double
    /// Average precision: Σ (Rₙ − Rₙ₋₁) Pₙ, as scikit-learn's average_precision_score.
    public var averagePrecision: Double

    public static func == (a: BinaryCurves, b: BinaryCurves) -> Bool {
        a.rocAUC == b.rocAUC && a.averagePrecision == b.averagePrecision && a.roc.elementsEqual(b.roc, by: ==)
            && a.precisionRecall.elementsEqual(b.precisionRecall, by: ==)
    }

    /// nil when one of the classes is absent or a score is NaN (a diverged model): the curves are undefined.
    public init?(scores: [Double], positive: [Bool]) {
        let positives = positive.filter { $0 }.count, negatives = positive.count - positives
        guard positives > 0, negatives > 0, !scores.contains(where: \.isNaN) else { return nil }
        let order = scores.indices.sorted { scores[$0] > scores[$1] }
        var tp = 0, fp = 0, i = 0
        var roc: [(x: Double, y: Double)] = [(0, 0)]
        var pr: [(x: Double, y: Double)] = [(0, 1)]
        var auc = 0.0, ap = 0.0
        while i < order.count {
            // One point per distinct score: ties move together.
            let threshold = scores[order[i]]
            let previousTP = tp, previousFP = fp
            while i < order.count && scores[order[i]] == threshold {
                if positive[order[i]] { tp += 1 } else { fp += 1 }
                i += 1
            }
            let tpr = Double(tp) / Double(positives), fpr = Double(fp) / Double(negatives)
            auc += (fpr - Double(previousFP) / Double(negatives)) * (tpr + Double(previousTP) / Double(positives)) / 2
            let precision = Double(tp) / Double(tp + fp)
            ap += (tpr - Double(previousTP) / Double(positives)) * precision
            roc.append((fpr, tpr))
            pr.append((tpr, precision))
        }
        self.roc = roc
        self.precisionRecall = pr
        rocAUC = auc
        averagePrecision = ap
    }
}

/// P(class 1) = softmax(logits)[1] for each row of a 2-class logits matrix [n, 2].
public func positiveProbabilities(_ logits: [Float]) -> [Double] {
    stride(from: 0, to: logits.count, by: 2).map { softmax(logits[$0..<($0 + 2)])[1] }
}
