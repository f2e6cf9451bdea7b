import Foundation

/// Mean cross-entropy with a stable log-softmax. Returns the loss and writes dL/dlogits = (softmax − onehot)/N.
func crossEntropy(_ logits: UnsafePointer<Float>, labels: [Int], classes: Int,
                  gradient: UnsafeMutablePointer<Float>) -> Float {
    let batch = labels.count
    var total: Double = 0
    for n in 0..<batch {
        let row = UnsafeBufferPointer(start: logits + n * classes, count: classes), g = gradient + n * classes
        total += logSumExp(row) - Double(row[labels[n]])
        for (k, p) in softmax(row).enumerated() {
            g[k] = (Float(p) - (k == labels[n] ? 1 : 0)) / Float(batch)
        }
    }
    return Float(total / Double(batch))
}
