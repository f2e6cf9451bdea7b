import ResNetModel

/// Collects int8 activation ranges from the fp32 plan's layer observer, batch by batch.
/// `max`: the largest value seen anywhere (nothing clips, small values get few levels). `percentile`: each
/// batch's P-th percentile of the magnitudes, averaged over the batches (outliers clip, the bulk gets more levels).
public final class RangeCollector {
    public enum Method: Equatable, Sendable {
        case max
        case percentile(Double)

        public var description: String {
            switch self {
            case .max: return "max"
            case .percentile(let p): return "percentile \(p)"
            }
        }
    }

    public let method: Method
    private var sums: [String: Double] = [:]
    private var batches = 0

    public init(method: Method) { self.method = method }

    /// The range of one tensor's values under this method (for one batch).
    func range(_ values: UnsafeBufferPointer<Float>) -> Float {
        var largest: Float = 0
        for v in values { largest = Swift.max(largest, abs(v)) }
        guard case .percentile(let p) = method, largest > 0 else { return largest }
        // A histogram of |x| over [0, largest]; the percentile is the upper edge of the bin reaching it.
        let bins = 4096
        var counts = [Int](repeating: 0, count: bins)
        let perUnit = Float(bins) / largest
        for v in values { counts[Swift.min(bins - 1, Int(abs(v) * perUnit))] += 1 }
        let target = Int((Double(values.count) * p / 100).rounded(.up))
        var seen = 0
        for (bin, count) in counts.enumerated() {
            seen += count
            if seen >= target { return Float(bin + 1) / perUnit }
        }
        return largest
    }

    private func add(_ name: String, _ value: Float) {
        switch method {
        case .max: sums[name] = Swift.max(sums[name] ?? 0, Double(value))
        case .percentile: sums[name, default: 0] += Double(value)
        }
    }

    /// Runs one batch of preprocessed NHWC images through `plan` and records the input's and every layer's range.
    public func add(_ plan: InferencePlan, images: UnsafeBufferPointer<Float>, count: Int, height: Int, width: Int) {
        add("input", range(images))
        var features = [Float](repeating: 0, count: count * plan.featureWidth)
        features.withUnsafeMutableBufferPointer { f in
            plan.observe(images: images.baseAddress!, count: count, height: height, width: width, features: f.baseAddress!) { o in
                if let output = o.output { self.add(o.name, self.range(output)) }
            }
        }
        batches += 1
    }

    /// The ranges collected so far.
    public func scales(images: Int) -> ActivationScales {
        let divisor = method == .max ? 1 : Double(Swift.max(1, batches))
        var maxima = sums.mapValues { Float($0 / divisor) }
        let input = maxima.removeValue(forKey: "input") ?? 0
        return ActivationScales(input: input, maxima: maxima, method: "\(method.description) over \(images) images")
    }
}
