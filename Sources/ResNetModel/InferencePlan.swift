import COpenBLAS

/// The eval-mode network compiled for speed: every BatchNorm folded into the convolution (or linear
/// layer) it belongs to, weights in im2col order, bias + residual + ReLU fused into one pass over each
/// GEMM's output, activations in buffers reused across batches. Build once, run many batches.
/// The 3x3 stride-1 convolutions run as Winograd F(2x2, 3x3) (`WinogradConv`) where its tiles fit the layer,
/// convolutions on maps so small that im2col would mostly multiply padding run tap by tap (`TapwiseConv`).
///
/// A batch is split across `Parallelism.threads` lanes, each running the whole network on its slice with
/// single-threaded OpenBLAS calls: on these GEMM shapes that is nearly twice as fast as one multi-threaded
/// GEMM per layer, whose per-call thread hand-offs and barriers dominate (measured in tools/bench).
/// Not thread-safe: one plan per thread (the weights are shared copy-on-write).
public final class InferencePlan {
    /// A convolution with its BatchNorm folded in: weight [out, kh, kw, in], bias [out].
    struct FoldedConv {
        var shape: ConvShape
        var weight: [Float]
        var bias: [Float]
        /// The same convolution as Winograd F(2x2, 3x3): built the first time a batch's geometry calls for it.
        var winograd: WinogradConv?
    }

    struct FoldedBlock {
        var conv1: FoldedConv, conv2: FoldedConv, downsample: FoldedConv?
    }

    /// y = x · Wᵀ + b, weight [out, in]; ReLU follows every layer but the last.
    struct FoldedLinear {
        var inputs: Int, outputs: Int
        var weight: [Float]
        var bias: [Float]
    }

    public let architecture: Architecture
    let stem: FoldedConv
    private(set) var blocks: [FoldedBlock]
    let head: [FoldedLinear]
    /// Upper bound on each lane's im2col buffer, in floats: the batch is processed in row chunks so memory
    /// stays flat.
    public var columnBudget = 2 << 20
    /// How the convolutions are computed.
    public var algorithm = ConvolutionAlgorithm.automatic

    /// Rows per im2col chunk: enough that the column matrix stays in L2, but at least `minimumChunkRows` so
    /// that packing the weights for each chunk stays cheap.
    static let cacheColumnFloats = 1 << 18, minimumChunkRows = 512

    /// One lane's scratch memory: four activation buffers and the im2col column, grown, never shrunk; and the
    /// tap lists of the convolutions it ran tap by tap.
    final class Workspace {
        var buffers: [UnsafeMutableBufferPointer<Float>] = []
        var column = UnsafeMutableBufferPointer<Float>(start: nil, count: 0)
        var tapwise: [TapwiseKey: TapwiseConv] = [:]

        struct TapwiseKey: Hashable { var shape: ConvShape, height: Int, width: Int }

        func tapwise(_ s: ConvShape, _ g: Geometry) -> TapwiseConv {
            let key = TapwiseKey(shape: s, height: g.height, width: g.width)
            if let conv = tapwise[key] { return conv }
            let conv = TapwiseConv(s, inputHeight: g.height, width: g.width)
            tapwise[key] = conv
            return conv
        }

        func reserve(_ sizes: [Int]) {
            if buffers.count == sizes.count && zip(buffers, sizes).allSatisfy({ $0.count >= $1 }) { return }
            buffers.forEach { $0.deallocate() }
            buffers = sizes.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
        }

        func reserveColumn(_ floats: Int) {
            guard column.count < floats else { return }
            column.deallocate()
            column = .allocate(capacity: floats)
        }

        deinit {
            buffers.forEach { $0.deallocate() }
            column.deallocate()
        }
    }

    private var lanes: [Workspace] = []
    private let laneThreads = LaneThreads()

    public var numClasses: Int { architecture.config.numClasses }

    public init(architecture: Architecture, state: StateDict) throws {
        try architecture.validate(state)
        self.architecture = architecture
        let eps = architecture.config.batchNormEpsilon
        func fold(_ conv: String, _ bn: String, _ shape: ConvShape) -> FoldedConv {
            let (scale, shift) = Self.batchNormAffine(state, bn, eps)
            var weight = patchMajorWeight(state["\(conv).weight"]!.data, shape)
            let perOutput = shape.patchSize
            for o in 0..<shape.outChannels {
                for i in 0..<perOutput { weight[o * perOutput + i] *= scale[o] }
            }
            return FoldedConv(shape: shape, weight: weight, bias: shift)
        }
        stem = fold("conv1", "bn1", architecture.stem)
        blocks = architecture.blocks.map { b in
            FoldedBlock(conv1: fold("\(b.name).conv1", "\(b.name).bn1", b.conv1),
                        conv2: fold("\(b.name).conv2", "\(b.name).bn2", b.conv2),
                        downsample: b.downsample.map { fold("\(b.name).downsample.0", "\(b.name).downsample.1", $0) })
        }
        switch architecture.config.head {
        case .linear:
            head = [Self.linear(state, "fc", inputAffine: nil)]
        case .mlp:
            head = [Self.linear(state, "head.fc1", inputAffine: Self.batchNormAffine(state, "head.bn1", eps)),
                    Self.linear(state, "head.fc2", inputAffine: Self.batchNormAffine(state, "head.bn2", eps))]
        }
    }

    /// Eval-mode BatchNorm as y = scale · x + shift.
    static func batchNormAffine(_ state: StateDict, _ bn: String, _ eps: Float) -> (scale: [Float], shift: [Float]) {
        let gamma = state["\(bn).weight"]!.data, beta = state["\(bn).bias"]!.data
        let mean = state["\(bn).running_mean"]!.data, variance = state["\(bn).running_var"]!.data
        var scale = [Float](repeating: 0, count: gamma.count), shift = scale
        for c in 0..<gamma.count {
            scale[c] = gamma[c] / (variance[c] + eps).squareRoot()
            shift[c] = beta[c] - mean[c] * scale[c]
        }
        return (scale, shift)
    }

    /// A linear layer, with an eval-mode BatchNorm on its input folded in: W·(a⊙x + s) + b = (W·diag a)·x + (W·s + b).
    static func linear(_ state: StateDict, _ name: String, inputAffine: (scale: [Float], shift: [Float])?) -> FoldedLinear {
        let w = state["\(name).weight"]!
        let outputs = w.shape[0], inputs = w.shape[1]
        var weight = w.data, bias = state["\(name).bias"]!.data
        if let (scale, shift) = inputAffine {
            for o in 0..<outputs {
                var extra: Float = 0
                for i in 0..<inputs {
                    extra += weight[o * inputs + i] * shift[i]
                    weight[o * inputs + i] *= scale[i]
                }
                bias[o] += extra
            }
        }
        return FoldedLinear(inputs: inputs, outputs: outputs, weight: weight, bias: bias)
    }

    /// Activation buffer sizes, in floats, for a batch of this geometry.
    private func bufferSizes(_ input: Geometry) -> [Int] {
        let width = architecture.config.baseWidth
        let stemOut = input.output(of: architecture.stem)
        // The stem's output is the largest activation; after the max pool, layer1's is (channels double as
        // pixels quarter). Buffer 0 holds the stem output and later serves as a block buffer.
        let sizes = [stemOut.pixels * width] + Array(repeating: max(
            Geometry(batch: input.batch, height: architecture.stemOutputSide(input.height),
                     width: architecture.stemOutputSide(input.width)).pixels * width,
            input.batch * architecture.config.featureWidth, input.batch * max(architecture.config.hiddenUnits, numClasses)), count: 3)
        return sizes
    }

    /// Builds the Winograd weights that lanes of up to `laneImages` images of this size need (16/9 the space of
    /// the originals, so only those), before the lanes share the plan.
    private func prepareWinograd(laneImages: Int, height: Int, width: Int) {
        var g = Geometry(batch: laneImages, height: architecture.stemOutputSide(height),
                         width: architecture.stemOutputSide(width))
        func prepare(_ conv: inout FoldedConv, _ g: Geometry) {
            guard conv.winograd == nil, algorithm.usesWinograd(conv.shape, laneInput: g) else { return }
            conv.winograd = WinogradConv(patchMajorWeight: conv.weight, bias: conv.bias,
                                         inChannels: conv.shape.inChannels, outChannels: conv.shape.outChannels)
        }
        for index in blocks.indices {
            prepare(&blocks[index].conv1, g)
            g = g.output(of: blocks[index].conv1.shape)
            prepare(&blocks[index].conv2, g)
        }
    }

    /// One folded convolution over a whole batch, with the fused epilogue. Returns the output geometry.
    private func run(_ conv: FoldedConv, _ input: UnsafePointer<Float>, _ g: Geometry,
                     _ output: UnsafeMutablePointer<Float>, residual: UnsafePointer<Float>?, relu: Bool,
                     _ lane: Workspace, threads: Int) -> Geometry {
        let s = conv.shape
        let out = g.output(of: s)
        let rows = out.pixels, patch = s.patchSize, cout = s.outChannels
        if let winograd = conv.winograd, algorithm.usesWinograd(s, laneInput: g) {
            lane.reserveColumn(winograd.scratchFloats)
            winograd.run(input, g, output, residual: residual, relu: relu, scratch: lane.column.baseAddress!)
            return out
        }
        conv.weight.withUnsafeBufferPointer { w in
            conv.bias.withUnsafeBufferPointer { b in
                if s.kernel == 1 && s.stride == 1 && s.padding == 0 {
                    // 1x1 stride 1: the activation already is the column matrix.
                    gemmABt(rows, cout, patch, input, patch, w.baseAddress!, patch, output, cout)
                    biasResidualReLU(output, rows: rows, channels: cout, bias: b.baseAddress!, residual: residual,
                                     relu: relu, threads: threads)
                    return
                }
                if algorithm.usesTaps(s, input: g) {
                    runTapwise(lane.tapwise(s, g), input, g, output, w.baseAddress!, lane)
                    biasResidualReLU(output, rows: rows, channels: cout, bias: b.baseAddress!, residual: residual,
                                     relu: relu, threads: threads)
                    return
                }
                let chunk = max(1, min(rows, columnBudget / patch, max(Self.cacheColumnFloats / patch, Self.minimumChunkRows)))
                lane.reserveColumn(chunk * patch)
                let column = lane.column.baseAddress!
                var first = 0
                while first < rows {
                    let count = min(chunk, rows - first)
                    im2col(s, input, g, firstRow: first, rows: count, column, threads: threads)
                    let dst = output + first * cout
                    gemmABt(count, cout, patch, column, patch, w.baseAddress!, patch, dst, cout)
                    biasResidualReLU(dst, rows: count, channels: cout, bias: b.baseAddress!,
                                     residual: residual.map { $0 + first * cout }, relu: relu, threads: threads)
                    first += count
                }
            }
        }
        return out
    }

    /// output = conv(input) tap by tap, in chunks of images whose gathered input fits the column budget.
    private func runTapwise(_ conv: TapwiseConv, _ input: UnsafePointer<Float>, _ g: Geometry,
                            _ output: UnsafeMutablePointer<Float>, _ weight: UnsafePointer<Float>, _ lane: Workspace) {
        let cin = conv.shape.inChannels, cout = conv.shape.outChannels
        let chunk = max(1, min(g.batch, columnBudget / max(1, conv.gatheredFloats(images: 1))))
        let gathered = conv.gatheredFloats(images: chunk)
        lane.reserveColumn(gathered + conv.productFloats(images: chunk, columns: cout))
        let column = lane.column.baseAddress!
        var first = 0
        while first < g.batch {
            let images = min(chunk, g.batch - first)
            let x = input + first * conv.inputArea * cin
            conv.gather(x, images: images, into: column)
            conv.multiply(x, gathered: column, images: images, weight: weight, columns: 0..<cout,
                          output: output + first * conv.outputArea * cout, outputStride: cout, products: column + gathered)
            first += images
        }
    }

    /// Logits for a batch of NHWC images ([count, height, width, 3], already normalised) into `logits`
    /// ([count, numClasses]). Height and width must be at least `ModelConfig.minimumInputSide`.
    public func run(images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                    logits: UnsafeMutablePointer<Float>) {
        precondition(count > 0 && height > 0 && width > 0, "empty batch")
        let laneCount = max(1, min(Parallelism.threads, count))
        while lanes.count < laneCount { lanes.append(Workspace()) }
        prepareWinograd(laneImages: (count + laneCount - 1) / laneCount, height: height, width: width)
        let imageFloats = height * width * 3
        if laneCount == 1 {
            // One image (or one thread): let OpenBLAS and the kernels share the work instead.
            forward(images, count: count, height: height, width: width, logits, lanes[0], threads: Parallelism.threads)
            return
        }
        let blasThreads = openblas_get_num_threads()
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(blasThreads) }
        laneThreads.run(laneCount) { lane in
            let first = count * lane / laneCount, end = count * (lane + 1) / laneCount
            forward(images + first * imageFloats, count: end - first, height: height, width: width,
                    logits + first * numClasses, lanes[lane], threads: 1)
        }
    }

    /// The whole network over one lane's slice of the batch.
    private func forward(_ images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                         _ logits: UnsafeMutablePointer<Float>, _ lane: Workspace, threads: Int) {
        let input = Geometry(batch: count, height: height, width: width)
        lane.reserve(bufferSizes(input))
        let buf = lane.buffers.map { $0.baseAddress! }
        // Stem: conv1 + bn1 + ReLU → buffer 0, max pool → buffer 1.
        var g = run(stem, images, input, buf[0], residual: nil, relu: true, lane, threads: threads)
        g = maxPool3x3s2(buf[0], g, channels: stem.shape.outChannels, buf[1], threads: threads)
        // Blocks rotate through four buffers: x (input), t (after conv1), d (downsample), y (output).
        var x = 1, free = [0, 2, 3]
        for block in blocks {
            let t = free[0], y = free[1]
            let mid = run(block.conv1, buf[x], g, buf[t], residual: nil, relu: true, lane, threads: threads)
            var residual = buf[x]
            if let ds = block.downsample {
                _ = run(ds, buf[x], g, buf[free[2]], residual: nil, relu: false, lane, threads: threads)
                residual = buf[free[2]]
            }
            g = run(block.conv2, buf[t], mid, buf[y], residual: residual, relu: true, lane, threads: threads)
            free = [x, t, free[2]]
            x = y
        }
        // Head: average pool, then the folded linear layers (ReLU between them).
        let features = architecture.config.featureWidth
        var current = buf[free[0]], spare = buf[free[1]]
        globalAveragePool(buf[x], g, channels: features, current)
        for (index, layer) in head.enumerated() {
            let last = index == head.count - 1
            let dst = last ? logits : spare
            layer.weight.withUnsafeBufferPointer { w in
                layer.bias.withUnsafeBufferPointer { b in
                    gemmABt(count, layer.outputs, layer.inputs, current, layer.inputs, w.baseAddress!, layer.inputs, dst, layer.outputs)
                    biasResidualReLU(dst, rows: count, channels: layer.outputs, bias: b.baseAddress!, residual: nil,
                                     relu: !last, threads: threads)
                }
            }
            if !last { swap(&current, &spare) }
        }
    }

    /// Convenience for tests and small jobs: NHWC images in, logits [count, numClasses] out.
    public func run(images: [Float], count: Int, height: Int, width: Int) -> [Float] {
        precondition(images.count == count * height * width * 3, "image data does not match \(count)x\(height)x\(width)x3")
        var logits = [Float](repeating: 0, count: count * numClasses)
        images.withUnsafeBufferPointer { img in
            logits.withUnsafeMutableBufferPointer { out in
                run(images: img.baseAddress!, count: count, height: height, width: width, logits: out.baseAddress!)
            }
        }
        return logits
    }
}

/// NCHW (PyTorch's layout) → NHWC.
public func nhwc(fromNCHW x: [Float], batch: Int, channels: Int, height: Int, width: Int) -> [Float] {
    var out = [Float](repeating: 0, count: x.count)
    let area = height * width
    for n in 0..<batch {
        for c in 0..<channels {
            for i in 0..<area { out[(n * area + i) * channels + c] = x[(n * channels + c) * area + i] }
        }
    }
    return out
}
