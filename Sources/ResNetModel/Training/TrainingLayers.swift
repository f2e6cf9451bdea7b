import CKernels
import Dispatch
import Foundation

// Training layers as explicit forward/backward pairs over NHWC activations ([rows, channels] matrices,
// rows = N·H·W). Each layer owns its output and input-gradient buffers, reused across steps, and keeps
// what its backward pass needs (its input pointer, batch statistics, argmax, dropout mask).

/// A growable float buffer owned by one layer: grown when a batch needs more, never shrunk.
final class FloatBuffer {
    private(set) var pointer: UnsafeMutablePointer<Float>
    private(set) var capacity: Int

    init() {
        pointer = .allocate(capacity: 1)
        capacity = 1
    }

    deinit { pointer.deallocate() }

    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            pointer = .allocate(capacity: count)
            capacity = count
        }
        return pointer
    }
}

/// A trainable tensor with its gradient, addressed by torchvision name. Convolution weights are kept
/// patch-major ([out, kh, kw, in], im2col's column order) and converted at the boundary.
public final class TrainableParameter {
    public let name: String
    /// torchvision shape.
    public let shape: [Int]
    let convShape: ConvShape?
    let value: UnsafeMutableBufferPointer<Float>
    let gradient: UnsafeMutableBufferPointer<Float>
    /// When false, backward computes no gradient for it and the optimizer leaves it alone.
    public var requiresGrad = true
    /// Bumped by `setValues`, so caches derived from the value (the fused frozen backbone) know to rebuild.
    private(set) var version = 0

    public var count: Int { value.count }

    init(name: String, shape: [Int], convShape: ConvShape? = nil, torchValues: [Float]) {
        self.name = name
        self.shape = shape
        self.convShape = convShape
        value = .allocate(capacity: torchValues.count)
        gradient = .allocate(capacity: torchValues.count)
        gradient.initialize(repeating: 0)
        _ = value.initialize(from: convShape.map { patchMajorWeight(torchValues, $0) } ?? torchValues)
    }

    deinit {
        value.deallocate()
        gradient.deallocate()
    }

    func torchLayout(_ stored: [Float]) -> [Float] { convShape.map { torchWeight(stored, $0) } ?? stored }
    func internalLayout(_ torch: [Float]) -> [Float] { convShape.map { patchMajorWeight(torch, $0) } ?? torch }

    /// Current values, torchvision layout.
    public var values: [Float] { torchLayout(Array(value)) }
    /// Gradient of the last backward pass, torchvision layout.
    public var gradients: [Float] { torchLayout(Array(gradient)) }

    public func setValues(_ torch: [Float]) {
        precondition(torch.count == count, "\(name): \(torch.count) values for \(count)")
        _ = value.update(from: internalLayout(torch))
        version += 1
    }
}

/// What the convolutions of a training network share: their scratch memory (they run one at a time) and how
/// they are computed.
final class TrainingWorkspace {
    var algorithm = ConvolutionAlgorithm.automatic
    let scratch = ConvolutionScratch()
}

/// Conv2d without bias, a training layer over the engine's `Convolution`: it keeps the input for backward and
/// owns its output and input-gradient buffers. Forward: out[P, Cout] = conv(x); backward: dW and dx.
final class Conv2dLayer {
    let shape: ConvShape
    let weight: TrainableParameter
    let convolution: Convolution
    let workspace: TrainingWorkspace
    let output = FloatBuffer(), inputGradient = FloatBuffer()
    private var input: UnsafePointer<Float>?
    private var inputGeometry = Geometry(batch: 0, height: 0, width: 0)

    init(_ shape: ConvShape, weight: TrainableParameter, workspace: TrainingWorkspace) {
        self.shape = shape
        self.weight = weight
        self.workspace = workspace
        convolution = Convolution(shape, parameter: weight)
    }

    /// x [N·H·W, Cin] → out [N·Ho·Wo, Cout].
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry) -> (UnsafeMutablePointer<Float>, Geometry) {
        input = x
        inputGeometry = g
        let out = g.output(of: shape)
        let y = output.reserve(out.pixels * shape.outChannels)
        let laneImages = (g.batch + Parallelism.threads - 1) / Parallelism.threads
        let method = convolution.method(g, laneImages: laneImages, algorithm: workspace.algorithm,
                                        trainable: weight.requiresGrad)
        convolution.prepare(method, g)
        convolution.forward(x, g, y, method: method, split: .lanes, scratch: workspace.scratch)
        return (y, out)
    }

    /// dy [N·Ho·Wo, Cout] → dx [N·H·W, Cin] (when `needsInputGradient`); dW overwritten when required.
    func backward(_ dy: UnsafePointer<Float>, needsInputGradient: Bool) -> UnsafeMutablePointer<Float>? {
        guard let x = input else { return nil }
        let g = inputGeometry
        let dx: UnsafeMutablePointer<Float>? = needsInputGradient ? inputGradient.reserve(g.pixels * shape.inChannels) : nil
        convolution.backward(x, g, dy, weightGradient: weight.requiresGrad ? weight.gradient.baseAddress! : nil,
                             inputGradient: dx, algorithm: workspace.algorithm, scratch: workspace.scratch)
        return dx
    }
}

/// The adjoint of im2col: adds each column row back onto the input pixels it was copied from.
/// Images are independent, so lanes split the chunk by image and never write the same pixel.
func col2imAdd(_ s: ConvShape, _ col: UnsafePointer<Float>, _ g: Geometry, firstImage: Int, images: Int,
               _ dx: UnsafeMutablePointer<Float>) {
    let out = g.output(of: s)
    let k = s.kernel, cin = s.inChannels, patch = s.patchSize, perImage = out.height * out.width
    TrainingLanes.forEachRange(images, minimum: 1) { range in
        for i in range {
            let n = firstImage + i
            for q in 0..<perImage {
                let wo = q % out.width, ho = q / out.width
                let src = col + (i * perImage + q) * patch
                let iw0 = wo * s.stride - s.padding
                let kwFirst = max(0, -iw0), kwEnd = min(k, g.width - iw0)
                guard kwEnd > kwFirst else { continue }
                let run = (kwEnd - kwFirst) * cin
                for kh in 0..<k {
                    let ih = ho * s.stride - s.padding + kh
                    guard ih >= 0, ih < g.height else { continue }
                    let dst = dx + ((n * g.height + ih) * g.width + iw0 + kwFirst) * cin
                    let from = src + (kh * k + kwFirst) * cin
                    for j in 0..<run { dst[j] += from[j] }
                }
            }
        }
    }
}

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
        let c = channels
        if batchStatistics {
            // One pass of per-channel Σx and Σx² in double precision (no cancellation worth the name at these
            // sizes), split across the lanes.
            let (sum, squares) = channelSums(rows: rows, channels: c) { range, s, q in
                resnetkit_channel_moments(x + range.lowerBound * c, range.count, c, s, q)
            }
            let unbiasedScale = rows > 1 ? Double(rows) / Double(rows - 1) : 1
            for j in 0..<c {
                let m = sum[j] / Double(rows)
                let variance = max(0, squares[j] / Double(rows) - m * m)
                mean[j] = Float(m)
                invStd[j] = Float(1 / (variance + Double(epsilon)).squareRoot())
                runningMean[j] = (1 - momentum) * runningMean[j] + momentum * Float(m)
                runningVar[j] = (1 - momentum) * runningVar[j] + momentum * Float(variance * unbiasedScale)
            }
            batchesTracked += 1
        } else {
            for j in 0..<c {
                mean[j] = runningMean[j]
                invStd[j] = 1 / (runningVar[j] + epsilon).squareRoot()
            }
        }
        // y = x·scale + shift, scale = γ/σ, shift = β − μ·scale.
        var scale = [Float](repeating: 0, count: c), shift = scale
        for j in 0..<c {
            scale[j] = weight.value[j] * invStd[j]
            shift[j] = bias.value[j] - mean[j] * scale[j]
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
                if weight.requiresGrad { for j in 0..<c { weight.gradient[j] = Float(sumDyXhat[j]) } }
                if bias.requiresGrad { for j in 0..<c { bias.gradient[j] = Float(sumDy[j]) } }
                guard needsInputGradient else { return nil }
                for j in 0..<c {
                    scale[j] = weight.value[j] * s[j]
                    meanDy[j] = usedBatchStatistics ? Float(sumDy[j] / Double(rows)) : 0
                    meanDyXhat[j] = usedBatchStatistics ? Float(sumDyXhat[j] / Double(rows)) : 0
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

/// dx = dy where the ReLU's output y is positive, else 0: the gradient through a ReLU, split across the lanes.
func reluGradient(_ dy: UnsafePointer<Float>, output y: UnsafePointer<Float>, count: Int, into dx: UnsafeMutablePointer<Float>) {
    TrainingLanes.forEachRange(count, minimum: EngineTuning.bulkFloatsPerPart) { range in
        forEachChunk(range) { i in
            dx.store(SIMD8<Float>.zero.replacing(with: dy.vector(i), where: y.vector(i) .> 0), at: i)
        } remainder: { i in
            dx[i] = y[i] > 0 ? dy[i] : 0
        }
    }
}

/// Runs `vector(j)` for each whole chunk of eight indices of `range` (eight channels of a row, say), then
/// `remainder(j)` for each index left over (the same arithmetic, one float at a time).
@inline(__always)
func forEachChunk(_ range: Range<Int>, _ vector: (Int) -> Void, remainder: (Int) -> Void) {
    var j = range.lowerBound
    while j + 8 <= range.upperBound { vector(j); j += 8 }
    while j < range.upperBound { remainder(j); j += 1 }
}

extension UnsafePointer<Float> {
    /// The eight floats from `i` on.
    @inline(__always) func vector(_ i: Int) -> SIMD8<Float> { UnsafeRawPointer(self + i).loadUnaligned(as: SIMD8<Float>.self) }
}

extension UnsafeMutablePointer<Float> {
    @inline(__always) func vector(_ i: Int) -> SIMD8<Float> { UnsafePointer(self).vector(i) }
    @inline(__always) func store(_ v: SIMD8<Float>, at i: Int) { UnsafeMutableRawPointer(self + i).storeBytes(of: v, as: SIMD8<Float>.self) }
}

extension SIMD8<Float> {
    /// max(0, x) lane by lane, as `Swift.max(0, x)` (`pointwiseMax` is not inlined: a call per chunk).
    @inline(__always) var clampedBelowAtZero: SIMD8<Float> { SIMD8<Float>.zero.replacing(with: self, where: self .>= 0) }
}

/// Linear: y[N, out] = x[N, in] · Wᵀ + b, W [out, in] (torchvision layout), optionally followed by ReLU.
final class LinearLayer {
    let inputs: Int, outputs: Int
    let weight: TrainableParameter, bias: TrainableParameter
    let relu: Bool
    let output = FloatBuffer(), inputGradient = FloatBuffer(), outputGradient = FloatBuffer()
    private var input: UnsafePointer<Float>?
    private var batch = 0

    init(weight: TrainableParameter, bias: TrainableParameter, relu: Bool) {
        outputs = weight.shape[0]
        inputs = weight.shape[1]
        self.weight = weight
        self.bias = bias
        self.relu = relu
    }

    func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.batch = batch
        let y = output.reserve(batch * outputs)
        SplitGEMM.abT(batch, outputs, inputs, x, inputs, UnsafePointer(weight.value.baseAddress!), inputs, y, outputs)
        biasResidualReLU(y, rows: batch, channels: outputs, bias: bias.value.baseAddress!, residual: nil, relu: relu, threads: 1)
        return y
    }

    /// dy [N, out] → dx [N, in]; dW = dyᵀ·x, db = Σ dy.
    func backward(_ dyIn: UnsafePointer<Float>, needsInputGradient: Bool) -> UnsafeMutablePointer<Float>? {
        guard let x = input else { return nil }
        var dy = dyIn
        if relu {
            let masked = outputGradient.reserve(batch * outputs)
            reluGradient(dyIn, output: output.pointer, count: batch * outputs, into: masked)
            dy = UnsafePointer(masked)
        }
        if weight.requiresGrad {
            SplitGEMM.aTb(outputs, inputs, batch, dy, outputs, x, inputs, weight.gradient.baseAddress!, inputs)
        }
        if bias.requiresGrad {
            let db = bias.gradient
            for o in 0..<outputs { db[o] = 0 }
            for n in 0..<batch { for o in 0..<outputs { db[o] += dy[n * outputs + o] } }
        }
        guard needsInputGradient else { return nil }
        let dx = inputGradient.reserve(batch * inputs)
        SplitGEMM.ab(batch, inputs, outputs, dy, outputs, UnsafePointer(weight.value.baseAddress!), inputs, dx, inputs)
        return dx
    }
}

/// Inverted dropout: kept values scaled by 1/(1−p) in training, identity otherwise (and when p = 0).
final class DropoutLayer {
    let probability: Float
    let output = FloatBuffer(), inputGradient = FloatBuffer(), mask = FloatBuffer()
    private var active = false
    private var count = 0

    init(probability: Float) { self.probability = probability }

    func forward(_ x: UnsafePointer<Float>, count: Int, training: Bool, rng: inout SplitMix64) -> UnsafePointer<Float> {
        active = training && probability > 0
        self.count = count
        guard active else { return x }
        let m = mask.reserve(count), y = output.reserve(count)
        let keep = 1 / (1 - probability)
        for i in 0..<count {
            m[i] = rng.nextUnitFloat() < probability ? 0 : keep
            y[i] = x[i] * m[i]
        }
        return UnsafePointer(y)
    }

    func backward(_ dy: UnsafePointer<Float>) -> UnsafePointer<Float> {
        guard active else { return dy }
        let dx = inputGradient.reserve(count), m = mask.pointer
        for i in 0..<count { dx[i] = dy[i] * m[i] }
        return UnsafePointer(dx)
    }
}

/// Max pool 3x3/2 pad 1; forward records which tap of each window won, backward routes each output gradient
/// to that input.
final class MaxPoolLayer {
    let channels: Int
    let output = FloatBuffer(), inputGradient = FloatBuffer()
    private var window = UnsafeMutableBufferPointer<UInt8>(start: nil, count: 0)
    private var windowRecorded = false
    private var inputGeometry = Geometry(batch: 0, height: 0, width: 0)
    private var outputGeometry = Geometry(batch: 0, height: 0, width: 0)

    init(channels: Int) { self.channels = channels }
    deinit { window.deallocate() }

    /// `recordWindow`: keep what backward needs (a forward whose backward stops before this layer need not).
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, recordWindow: Bool) -> (UnsafeMutablePointer<Float>, Geometry) {
        let out = Geometry(batch: g.batch, height: Architecture.maxPoolOutputSide(g.height),
                           width: Architecture.maxPoolOutputSide(g.width))
        let count = out.pixels * channels
        if recordWindow && window.count < count {
            window.deallocate()
            window = .allocate(capacity: count)
        }
        let y = output.reserve(count)
        // Lanes split the batch by image.
        let inputImage = g.height * g.width * channels, outputImage = out.height * out.width * channels
        TrainingLanes.forEachRange(g.batch, minimum: 1) { images in
            let first = images.lowerBound
            maxPool3x3s2(x + first * inputImage, Geometry(batch: images.count, height: g.height, width: g.width),
                         channels: channels, y + first * outputImage,
                         window: recordWindow ? window.baseAddress! + first * outputImage : nil, threads: 1)
        }
        windowRecorded = recordWindow
        inputGeometry = g
        outputGeometry = out
        return (y, out)
    }

    /// dy [N·Ho·Wo, C] → dx [N·H·W, C]; threads split by image (a window stays in its image).
    func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        precondition(windowRecorded, "max pool backward after a forward that did not record its windows")
        let g = inputGeometry, out = outputGeometry, c = channels
        let k = Architecture.maxPoolKernel, s = Architecture.maxPoolStride, pad = Architecture.maxPoolPadding
        let dx = inputGradient.reserve(g.pixels * c)
        dx.update(repeating: 0, count: g.pixels * c)
        // Offset of each tap from its window's top-left corner, in floats.
        let tapOffsets = (0..<(k * k)).map { (($0 / k) * g.width + $0 % k) * c }
        let perImage = out.height * out.width, taps = UnsafePointer(window.baseAddress!)
        tapOffsets.withUnsafeBufferPointer { tapOffsets in
            TrainingLanes.forEachRange(out.batch, minimum: 1) { range in
                for p in (range.lowerBound * perImage)..<(range.upperBound * perImage) {
                    let x = p % out.width, y = (p / out.width) % out.height, n = p / perImage
                    let corner = ((n * g.height + y * s - pad) * g.width + x * s - pad) * c
                    let grad = dy + p * c, tap = taps + p * c
                    for j in 0..<c { dx[corner + tapOffsets[Int(tap[j])] + j] += grad[j] }
                }
            }
        }
        return dx
    }
}

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
