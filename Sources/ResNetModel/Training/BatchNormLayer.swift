import CKernels

/// BatchNorm over the channels of [rows, C] (BatchNorm2d with rows = N·H·W, BatchNorm1d with rows = N),
/// optionally followed by ReLU. Training: normalise with the biased batch variance, update running_var with
/// the unbiased one, momentum 0.1, count the batch. With `useRunningStatistics` (eval mode, or a frozen
/// BatchNorm in eval mode) it is the affine map of the running statistics and nothing moves.
final class BatchNormLayer {
    let channels: Int
    let epsilon: Float
    let momentum: Float = 0.1
    let weight: TrainableParameter, bias: TrainableParameter
    var runningMean: [Float], runningVar: [Float]
    var batchesTracked: Int
    let relu: Bool
    let output = FloatBuffer(), inputGradient = FloatBuffer()
    // Saved for backward: the input, the mean and 1/sqrt(var + eps) used, and which statistics they were.
    private var input: UnsafePointer<Float>?
    private var rows = 0
    private var mean: [Float], invStd: [Float]
    private var usedBatchStatistics = false

    init(channels: Int, epsilon: Float, weight: TrainableParameter, bias: TrainableParameter,
         runningMean: [Float], runningVar: [Float], batchesTracked: Int, relu: Bool) {
        self.channels = channels
        self.epsilon = epsilon
        self.weight = weight
        self.bias = bias
        self.runningMean = runningMean
        self.runningVar = runningVar
        self.batchesTracked = batchesTracked
        self.relu = relu
        mean = [Float](repeating: 0, count: channels)
        invStd = mean
    }

    var isFrozen: Bool { !weight.requiresGrad && !bias.requiresGrad }

    /// x [rows, C] → y [rows, C] = BN(x), + residual [rows, C] when given, then ReLU when `relu` (a block's
    /// bn2 adds the shortcut in the same pass; its backward's ReLU mask is then the block's).
    func forward(_ x: UnsafePointer<Float>, rows: Int, batchStatistics: Bool,
                 residual: UnsafePointer<Float>? = nil) -> UnsafeMutablePointer<Float> {
        input = x
        self.rows = rows
        usedBatchStatistics = batchStatistics
        let c = channels, (momentum, epsilon) = (self.momentum, self.epsilon)
        // The per-channel loops run on locals: on the layer's stored arrays every element access is a dynamic
        // exclusivity check, and these loops run on one thread while the other lanes wait.
        var mean = [Float](repeating: 0, count: c), invStd = mean
        if batchStatistics {
            // One pass of per-channel Σx and Σx² in double precision (no cancellation worth the name at these
            // sizes), split across the lanes.
            let (sum, squares) = channelSums(rows: rows, channels: c) { range, s, q in
                resnetkit_channel_moments(x + range.lowerBound * c, range.count, c, s, q)
            }
            let unbiasedScale = rows > 1 ? Double(rows) / Double(rows - 1) : 1
            var runningMean = self.runningMean, runningVar = self.runningVar
            for j in 0..<c {
                let m = sum[j] / Double(rows)
                let variance = max(0, squares[j] / Double(rows) - m * m)
                mean[j] = Float(m)
                invStd[j] = Float(1 / (variance + Double(epsilon)).squareRoot())
                runningMean[j] = (1 - momentum) * runningMean[j] + momentum * Float(m)
                runningVar[j] = (1 - momentum) * runningVar[j] + momentum * Float(variance * unbiasedScale)
            }
            (self.runningMean, self.runningVar) = (runningMean, runningVar)
            batchesTracked += 1
        } else {
            let (runningMean, runningVar) = (self.runningMean, self.runningVar)
            for j in 0..<c {
                mean[j] = runningMean[j]
                invStd[j] = 1 / (runningVar[j] + epsilon).squareRoot()
            }
        }
        (self.mean, self.invStd) = (mean, invStd)
        // y = x·scale + shift, scale = γ/σ, shift = β − μ·scale.
        var scale = [Float](repeating: 0, count: c), shift = scale
        let (gamma, beta) = (weight.value, bias.value)
        for j in 0..<c {
            scale[j] = gamma[j] * invStd[j]
            shift[j] = beta[j] - mean[j] * scale[j]
        }
        let y = output.reserve(rows * c)
        let relu = relu
        scale.withUnsafeBufferPointer { scale in
            shift.withUnsafeBufferPointer { shift in
                let a = scale.baseAddress!, b = shift.baseAddress!
                TrainingLanes.forEachRange(rows, minimum: max(1, EngineTuning.elementwiseFloatsPerPart / c)) { range in
                    let offset = range.lowerBound * c
                    resnetkit_batchnorm_apply(x + offset, residual.map { $0 + offset }, a, b, range.count, c, relu ? 1 : 0,
                                              y + offset)
                }
            }
        }
        return y
    }

    /// dy [rows, C] (gradient of the output, before the ReLU when `relu`) → dx [rows, C].
    /// dγ = Σ dŷ·x̂, dβ = Σ dŷ; with batch statistics dx = γ/σ · (dŷ − mean(dŷ) − x̂·mean(dŷ·x̂)).
    func backward(_ dyIn: UnsafePointer<Float>, needsInputGradient: Bool) -> UnsafeMutablePointer<Float>? {
        guard let x = input else { return nil }
        let c = channels, rows = rows
        // With ReLU, dŷ = dy where the output is positive: applied on the fly in both passes.
        let y: UnsafePointer<Float>? = relu ? UnsafePointer(output.pointer) : nil
        var scale = [Float](repeating: 0, count: c), meanDy = scale, meanDyXhat = scale
        return mean.withUnsafeBufferPointer { mean in
            invStd.withUnsafeBufferPointer { invStd in
                let m = mean.baseAddress!, s = invStd.baseAddress!
                let (sumDy, sumDyXhat) = channelSums(rows: rows, channels: c) { range, sd, sdx in
                    let offset = range.lowerBound * c
                    resnetkit_batchnorm_gradient_sums(dyIn + offset, x + offset, y.map { $0 + offset }, m, s, range.count, c,
                                                      sd, sdx)
                }
                if weight.requiresGrad { let g = weight.gradient; for j in 0..<c { g[j] = Float(sumDyXhat[j]) } }
                if bias.requiresGrad { let g = bias.gradient; for j in 0..<c { g[j] = Float(sumDy[j]) } }
                guard needsInputGradient else { return nil }
                let (gamma, batchStatistics) = (weight.value, usedBatchStatistics)
                for j in 0..<c {
                    scale[j] = gamma[j] * s[j]
                    meanDy[j] = batchStatistics ? Float(sumDy[j] / Double(rows)) : 0
                    meanDyXhat[j] = batchStatistics ? Float(sumDyXhat[j] / Double(rows)) : 0
                }
                let dx = inputGradient.reserve(rows * c)
                scale.withUnsafeBufferPointer { scale in
                    meanDy.withUnsafeBufferPointer { meanDy in
                        meanDyXhat.withUnsafeBufferPointer { meanDyXhat in
                            let a = scale.baseAddress!, md = meanDy.baseAddress!, mdx = meanDyXhat.baseAddress!
                            TrainingLanes.forEachRange(rows, minimum: max(1, EngineTuning.elementwiseFloatsPerPart / c)) { range in
                                let offset = range.lowerBound * c
                                resnetkit_batchnorm_input_gradient(dyIn + offset, x + offset, y.map { $0 + offset }, m, s, a,
                                                                   md, mdx, range.count, c, dx + offset)
                            }
                        }
                    }
                }
                return dx
            }
        }
    }
}

/// Per-channel sums over the rows of a [rows, C] matrix: `body` accumulates its row range into two
/// zeroed double arrays of C; lanes get their own arrays, added up in a fixed order (deterministic).
func channelSums(rows: Int, channels c: Int,
                 _ body: (Range<Int>, UnsafeMutablePointer<Double>, UnsafeMutablePointer<Double>) -> Void) -> ([Double], [Double]) {
    let parts = max(1, min(Parallelism.threads, rows * c / EngineTuning.bulkFloatsPerPart))
    var partial = [Double](repeating: 0, count: parts * 2 * c)
    partial.withUnsafeMutableBufferPointer { buffer in
        let base = buffer.baseAddress!
        TrainingLanes.forEachRange(parts, minimum: 1) { lanes in
            for part in lanes {
                body(rows * part / parts ..< rows * (part + 1) / parts, base + part * 2 * c, base + part * 2 * c + c)
            }
        }
    }
    var first = [Double](repeating: 0, count: c), second = first
    for part in 0..<parts {
        for j in 0..<c {
            first[j] += partial[part * 2 * c + j]
            second[j] += partial[part * 2 * c + c + j]
        }
    }
    return (first, second)
}
