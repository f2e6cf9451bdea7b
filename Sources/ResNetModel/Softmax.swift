import Foundation

/// Offset of the first largest value (PyTorch's argmax on ties): the predicted class of a logits row.
/// Inlinable (as the two below): a generic call across the module runs through witness tables, a fiftieth of
/// batch-infer's time on 1000-class rows.
@inlinable
public func argmax<Row: Collection>(_ row: Row) -> Int where Row.Element == Float {
    var best = row.startIndex, index = row.startIndex
    while index != row.endIndex {
        if row[index] > row[best] { best = index }
        index = row.index(after: index)
    }
    return row.distance(from: row.startIndex, to: best)
}

/// log Σₖ exp(xₖ), shifted by the maximum so that no exponential overflows, summed in Double: the stable core
/// of log-softmax, cross-entropy and softmax probabilities.
@inlinable
public func logSumExp<Row: Collection>(_ row: Row) -> Double where Row.Element == Float {
    let largest = Double(row.max() ?? 0)
    return largest + log(row.reduce(0.0) { $0 + exp(Double($1) - largest) })
}

/// softmax(x)ₖ = exp(xₖ − log Σⱼ exp(xⱼ)), in Double: probabilities from a logits row.
@inlinable
public func softmax<Row: Collection>(_ row: Row) -> [Double] where Row.Element == Float {
    let logSum = logSumExp(row)
    return row.map { exp(Double($0) - logSum) }
}
