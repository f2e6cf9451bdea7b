import Foundation

/// log Σₖ exp(xₖ), shifted by the maximum so that no exponential overflows, summed in Double: the stable core
/// of log-softmax, cross-entropy and softmax probabilities.
public func logSumExp<Row: Collection>(_ row: Row) -> Double where Row.Element == Float {
    let largest = Double(row.max() ?? 0)
    return largest + log(row.reduce(0.0) { $0 + exp(Double($1) - largest) })
}
