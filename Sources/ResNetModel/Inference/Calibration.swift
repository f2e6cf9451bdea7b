/// Mean and biased variance (the variance BatchNorm normalises with in train mode) of each channel of a
/// convolution's output over every pixel of a batch.
public struct ChannelStatistics: Equatable, Sendable {
    public var mean: [Float]
    public var variance: [Float]
}

/// Running per-channel sums, in Double so that E[z²] − E[z]² does not cancel away float precision.
private struct ChannelAccumulator {
    var sum: [Double], squares: [Double], samples = 0

    init(channels: Int) {
        sum = [Double](repeating: 0, count: channels)
        squares = sum
    }

    /// Adds the rows of z [rows, channels].
    mutating func add(_ z: UnsafeBufferPointer<Float>) {
        let channels = sum.count, rows = z.count / channels
        sum.withUnsafeMutableBufferPointer { s in
            squares.withUnsafeMutableBufferPointer { q in
                for r in 0..<rows {
                    let row = z.baseAddress! + r * channels
                    for c in 0..<channels {
                        let v = Double(row[c])
                        s[c] += v
                        q[c] += v * v
                    }
                }
            }
        }
        samples += rows
    }

    var statistics: ChannelStatistics {
        let n = Double(max(samples, 1))
        let mean = sum.map { $0 / n }
        let variance = zip(squares, mean).map { max(0, $0 / n - $1 * $1) }
        return ChannelStatistics(mean: mean.map { Float($0) }, variance: variance.map { Float($0) })
    }
}

extension InferencePlan {
    /// Statistics of every convolution's output before its bias, z = W·x with W the plan's (BatchNorm-folded)
    /// weight, over all pixels of `images` (NHWC [count, height, width, 3], preprocessed), keyed by the name
    /// of the BatchNorm that follows the convolution (`bn1`, `layer2.0.bn1`, `layer2.0.downsample.1`, …).
    ///
    /// This is what rebuilding a folded BatchNorm needs: with running_mean = mean, running_var = variance,
    /// gamma = sqrt(variance + eps) and beta = bias + mean, eval mode computes exactly W·x + bias, and train
    /// mode on these images normalises with these same statistics, so it computes the same function too.
    /// The network runs in eval mode, `chunk` images at a time (memory stays flat for large batches).
    public func convolutionStatistics(images: [Float], count: Int, height: Int, width: Int,
                                      chunk: Int = 8) -> [String: ChannelStatistics] {
        precondition(count > 0 && images.count == count * height * width * 3, "image data does not match \(count)x\(height)x\(width)x3")
        var accumulators: [String: ChannelAccumulator] = [:]
        for (_, bn, shape) in architecture.namedConvolutions {
            accumulators[bn] = ChannelAccumulator(channels: shape.outChannels)
        }
        let imageSize = height * width * 3
        var features = [Float](repeating: 0, count: chunk * featureWidth)
        images.withUnsafeBufferPointer { images in
            features.withUnsafeMutableBufferPointer { features in
                var first = 0
                while first < count {
                    let n = min(chunk, count - first)
                    observe(images: images.baseAddress! + first * imageSize, count: n, height: height, width: width,
                            features: features.baseAddress!) { layer in
                        if let z = layer.convolution { accumulators[layer.name]!.add(z) }
                    }
                    first += n
                }
            }
        }
        return accumulators.mapValues(\.statistics)
    }
}
