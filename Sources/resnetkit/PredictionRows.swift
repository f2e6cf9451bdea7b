import Dispatch
import ResNetModel

/// CSV lines for a batch of predictions, formatted on the engine's threads into bytes. With many classes (an
/// ImageNet head has 1000 logits a row) turning floats into text costs a tenth of a fast engine's time, and the
/// engine's threads would sit idle while one thread did it; bytes rather than a growing String halve that cost.
enum PredictionRows {
    /// One part's lines as UTF-8.
    struct Lines {
        fileprivate(set) var bytes: [UInt8] = []

        mutating func append(_ text: String) {
            var text = text
            text.withUTF8 { bytes.append(contentsOf: $0) }
        }

        /// In Swift's shortest form that reads back exactly.
        mutating func append(_ value: Float) { append(value.description) }

        mutating func append(_ value: Int) { append(String(value)) }

        /// ",v0,v1,…"
        mutating func appendFields(_ values: ArraySlice<Float>) {
            values.withUnsafeBufferPointer { values in
                for value in values {
                    bytes.append(UInt8(ascii: ","))
                    append(value)
                }
            }
        }
    }

    /// `count` lines, line `n` written by `line(n, &lines)` (ending in "\n"), in order.
    static func format(count: Int, threads: Int = Parallelism.threads, _ line: (Int, inout Lines) -> Void) -> [UInt8] {
        let parts = max(1, min(threads, count))
        var pieces = [Lines](repeating: Lines(), count: parts)
        pieces.withUnsafeMutableBufferPointer { slots in
            let slots = slots  // each part writes its own slot
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                var lines = Lines()
                for n in (count * part / parts)..<(count * (part + 1) / parts) { line(n, &lines) }
                slots[part] = lines
            }
        }
        var all: [UInt8] = []
        all.reserveCapacity(pieces.reduce(0) { $0 + $1.bytes.count })
        for piece in pieces { all += piece.bytes }
        return all
    }
}
