import Foundation

/// PyTorch's `CrossEntropyLoss(weight: w)` with reduction "mean": Σᵢ w[yᵢ]·nllᵢ / Σᵢ w[yᵢ] (a weighted mean, not
/// divided by the batch size). logits [batch, classes] → the loss, and gradient [batch, classes] =
/// w[yᵢ]·(softmax(logitsᵢ) − onehot(yᵢ)) / Σ w[yᵢ]. Without weights it is the plain mean cross-entropy.
func weightedCrossEntropy(_ logits: UnsafePointer<Float>, labels: [Int], classes: Int, weights: [Float]?,
                          gradient: UnsafeMutablePointer<Float>) -> Float {
    guard let weights else { return crossEntropy(logits, labels: labels, classes: classes, gradient: gradient) }
    precondition(weights.count == classes, "one class weight per class")
    let total = labels.reduce(0.0) { $0 + Double(weights[$1]) }
    precondition(total > 0, "class weights must be positive")
    var loss: Double = 0
    for (n, label) in labels.enumerated() {
        let row = UnsafeBufferPointer(start: logits + n * classes, count: classes), g = gradient + n * classes
        let w = Double(weights[label])
        loss += w * (logSumExp(row) - Double(row[label]))
        for (k, p) in softmax(row).enumerated() {
            g[k] = Float(w * (p - (k == label ? 1 : 0)) / total)
        }
    }
    return Float(loss / total)
}

/// Per-class weights for the training loss.
public enum ClassWeights {
    /// scikit-learn's and Keras' "balanced" weights, n / (K · n_k) for K classes and n_k images of class k:
    /// every class then contributes the same total weight. nil when a class has no image (its weight would be
    /// infinite).
    public static func balanced(labels: [Int], classes: Int) -> [Float]? {
        var counts = [Int](repeating: 0, count: classes)
        for label in labels where (0..<classes).contains(label) { counts[label] += 1 }
        guard counts.allSatisfy({ $0 > 0 }) else { return nil }
        return counts.map { Float(Double(labels.count) / Double(classes * $0)) }
    }
}
