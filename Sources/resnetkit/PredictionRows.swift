import Dispatch
import ResNetModel

/// CSV lines for a batch of predictions, formatted on the engine's threads. With many classes (an ImageNet head
/// has 1000 logits a row) turning floats into text costs about as much as a fast engine's forward pass, and the
/// engine's threads would sit idle while one thread did it.
enum PredictionRows {
    /// `count` lines, line `n` written by `line(n, &text)` (ending in "\n"), in order.
    static func format(count: Int, threads: Int = Parallelism.threads, _ line: (Int, inout String) -> Void) -> String {
        let parts = max(1, min(threads, count))
        var pieces = [String](repeating: "", count: parts)
        pieces.withUnsafeMutableBufferPointer { slots in
            let slots = slots  // each part writes its own slot
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                var text = ""
                for n in (count * part / parts)..<(count * (part + 1) / parts) { line(n, &text) }
                slots[part] = text
            }
        }
        return pieces.joined()
    }

    /// ",v0,v1,…" appended to `text`: each value in Swift's shortest form that reads back exactly.
    static func append(_ values: ArraySlice<Float>, to text: inout String) {
        for value in values {
            text += ","
            value.write(to: &text)
        }
    }
}
