/// Every bound on a size that comes from a file or an option, in one place, and the checked arithmetic that
/// applies them: a value outside its limit is a one-line error, never an overflow trap or a huge allocation.
public enum Limits {
    /// Classes of a classifier head (ImageNet-21k has 21 841).
    public static let classes = 2...100_000
    /// ResNet-18's base width (64 in torchvision; the stages have 1, 2, 4, 8 times as many channels).
    public static let baseWidth = 1...1024
    /// Hidden units of the MLP head (the seed uses 256).
    public static let hiddenUnits = 1...65_536
    /// Centre crop side in pixels (0 keeps the whole image).
    public static let crop = 0...16_384
    /// Images per batch.
    public static let batchSize = 1...65_536
    /// Epochs of one training phase.
    public static let epochs = 0...1_000_000
    /// Images of `inspect --input-size` (a table, nothing is allocated, but mult-adds must not overflow).
    public static let inputBatch = 1...1_000_000
    /// Image side for `inspect --input-size`.
    public static let inputSide = 1...65_536
    /// Threads and decoders.
    public static let threads = 1...1024
    /// Largest image decoded, whatever the budget option says (8192²).
    public static let maxImagePixels = 1 << 26
    /// Bytes a batch of the largest allowed images may take by default: the per-image budget is this divided
    /// by the batch size and by the 12 bytes of a decoded float RGB pixel.
    public static let defaultBatchBytes = 1 << 30
    /// Nesting of protobuf messages in an ONNX file (a ResNet-18 graph is 4 deep; subgraphs add more).
    public static let protobufDepth = 32

    /// The default per-image pixel budget for batches of `batchSize`: a batch of images at the budget fits in
    /// about `defaultBatchBytes`, and PCam's 96x96 patches always fit.
    public static func defaultPixelBudget(batchSize: Int) -> Int {
        min(maxImagePixels, max(96 * 96 * 4, defaultBatchBytes / (12 * max(1, batchSize))))
    }

    /// Throws `message` naming `what` when `value` is outside `range`.
    public static func check(_ value: Int, _ range: ClosedRange<Int>, _ what: String) throws {
        guard range.contains(value) else { throw LimitError("\(what) must be between \(range.lowerBound) and \(range.upperBound), not \(value)") }
    }

    /// The product of `factors`, or nil when it overflows or exceeds `limit`.
    public static func product(_ factors: [Int], limit: Int = .max) -> Int? {
        var result = 1
        for factor in factors {
            guard factor >= 0 else { return nil }
            let (value, overflow) = result.multipliedReportingOverflow(by: factor)
            guard !overflow, value <= limit else { return nil }
            result = value
        }
        return result
    }
}

/// A value outside the limits of `Limits`: one line, said as an option or a file field names it.
public struct LimitError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
