import Foundation

/// Mean cross-entropy with a stable log-softmax. Returns the loss and writes dL/dlogits = (softmax − onehot)/N.
func crossEntropy(_ logits: UnsafePointer<Float>, labels: [Int], classes: Int,
                  gradient: UnsafeMutablePointer<Float>) -> Float {
    let batch = labels.count
    var total: Double = 0
    for n in 0..<batch {
        let row = logits + n * classes, g = gradient + n * classes
        let logSum = logSumExp(UnsafeBufferPointer(start: row, count: classes))
        total += logSum - Double(row[labels[n]])
        for k in 0..<classes {
            let p = Float(exp(Double(row[k]) - logSum))
            g[k] = (p - (k == labels[n] ? 1 : 0)) / Float(batch)
        }
    }
    return Float(total / Double(batch))
}
