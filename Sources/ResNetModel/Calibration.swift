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
    mutating func add(_ z: UnsafeMutableBufferPointer<Float>, rows: Int) {
        let channels = sum.count
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
        var first = 0
        while first < count {
            let n = min(chunk, count - first)
            let slice = Array(images[(first * imageSize)..<((first + n) * imageSize)])
            accumulateStatistics(slice, Geometry(batch: n, height: height, width: width), &accumulators)
            first += n
        }
        return accumulators.mapValues(\.statistics)
    }

    /// One eval-mode forward pass through the backbone, adding each convolution's pre-bias output to its accumulator.
    private func accumulateStatistics(_ images: [Float], _ input: Geometry, _ accumulators: inout [String: ChannelAccumulator]) {
        // conv → statistics of z → z + bias (+ residual) (→ ReLU); returns the activation [pixels, out].
        func layer(_ conv: FoldedConv, _ bn: String, _ x: [Float], _ g: Geometry,
                   residual: [Float]?, relu: Bool) -> (output: [Float], geometry: Geometry) {
            let s = conv.shape, out = g.output(of: s)
            var z = [Float](repeating: 0, count: out.pixels * s.outChannels)
            x.withUnsafeBufferPointer { xp in
                conv.weight.withUnsafeBufferPointer { w in
                    z.withUnsafeMutableBufferPointer { zp in
                        if s.kernel == 1 && s.stride == 1 && s.padding == 0 {
                            gemmABt(out.pixels, s.outChannels, s.patchSize, xp.baseAddress!, s.patchSize,
                                    w.baseAddress!, s.patchSize, zp.baseAddress!, s.outChannels)
                        } else {
                            // column [pixels, k·k·in]: calibration batches are small, one buffer per layer is fine.
                            var column = [Float](repeating: 0, count: out.pixels * s.patchSize)
                            column.withUnsafeMutableBufferPointer { col in
                                im2col(s, xp.baseAddress!, g, firstRow: 0, rows: out.pixels, col.baseAddress!)
                                gemmABt(out.pixels, s.outChannels, s.patchSize, col.baseAddress!, s.patchSize,
                                        w.baseAddress!, s.patchSize, zp.baseAddress!, s.outChannels)
                            }
                        }
                        accumulators[bn]!.add(zp, rows: out.pixels)
                        conv.bias.withUnsafeBufferPointer { b in
                            if let residual {
                                residual.withUnsafeBufferPointer { r in
                                    biasResidualReLU(zp.baseAddress!, rows: out.pixels, channels: s.outChannels,
                                                     bias: b.baseAddress!, residual: r.baseAddress!, relu: relu)
                                }
                            } else {
                                biasResidualReLU(zp.baseAddress!, rows: out.pixels, channels: s.outChannels,
                                                 bias: b.baseAddress!, residual: nil, relu: relu)
                            }
                        }
                    }
                }
            }
            return (z, out)
        }

        let (stemOut, stemGeometry) = layer(stem, "bn1", images, input, residual: nil, relu: true)
        let channels = stem.shape.outChannels
        var g = Geometry(batch: input.batch, height: architecture.stemOutputSide(input.height),
                         width: architecture.stemOutputSide(input.width))
        var x = [Float](repeating: 0, count: g.pixels * channels)
        stemOut.withUnsafeBufferPointer { src in
            x.withUnsafeMutableBufferPointer { dst in
                _ = maxPool3x3s2(src.baseAddress!, stemGeometry, channels: channels, dst.baseAddress!)
            }
        }
        for (block, layout) in zip(blocks, architecture.blocks) {
            let (t, mid) = layer(block.conv1, "\(layout.name).bn1", x, g, residual: nil, relu: true)
            var shortcut = x
            if let ds = block.downsample {
                shortcut = layer(ds, "\(layout.name).downsample.1", x, g, residual: nil, relu: false).output
            }
            (x, g) = layer(block.conv2, "\(layout.name).bn2", t, mid, residual: shortcut, relu: true)
        }
    }
}
