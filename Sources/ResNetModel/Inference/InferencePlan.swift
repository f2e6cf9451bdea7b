import COpenBLAS

/// The eval-mode network compiled for speed: every BatchNorm folded into the convolution (or linear
/// layer) it belongs to, weights in im2col order, bias + residual + ReLU fused into one pass over each
/// GEMM's output, activations in buffers reused across batches. Build once, run many batches.
/// The 3x3 stride-1 convolutions run as Winograd F(2x2, 3x3) (`WinogradConv`) where its tiles fit the layer,
/// convolutions on maps so small that im2col would mostly multiply padding run tap by tap (`TapwiseConv`).
///
/// A batch is split across `Parallelism.threads` lanes, each running the whole network on its slice with
/// single-threaded OpenBLAS calls: on these small GEMM shapes one multi-threaded GEMM per layer would spend
/// much of its time in thread hand-offs and barriers.
/// Not thread-safe: one plan per thread.
public final class InferencePlan {
    struct FoldedBlock {
        /// torchvision prefix (`layer2.0`), for observers.
        var name: String
        var conv1: Convolution, conv2: Convolution, downsample: Convolution?
    }

    public let architecture: Architecture
    let stem: Convolution
    let blocks: [FoldedBlock]
    /// nil for a backbone-only plan (`features` only).
    let head: FoldedHead?
    /// Upper bound on each lane's column matrix, in floats: larger batches go in chunks so memory stays flat.
    public var columnBudget = EngineTuning.columnBudgetFloats
    /// How the convolutions are computed.
    public var algorithm = ConvolutionAlgorithm.automatic

    /// One lane's memory: four activation buffers (grown, never shrunk) and its convolution scratch.
    final class Workspace {
        var buffers: [UnsafeMutableBufferPointer<Float>] = []
        let scratch = ConvolutionScratch()

        func reserve(_ sizes: [Int]) {
            if buffers.count == sizes.count && zip(buffers, sizes).allSatisfy({ $0.count >= $1 }) { return }
            buffers.forEach { $0.deallocate() }
            buffers = sizes.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
        }

        deinit { buffers.forEach { $0.deallocate() } }
    }

    private var lanes: [Workspace] = []
    private let laneThreads = LaneThreads()

    public var numClasses: Int { architecture.config.numClasses }
    /// Length of the pooled feature vector `features` returns.
    public var featureWidth: Int { architecture.config.featureWidth }

    /// The eval-mode network from a state dict; with `head: false`, the backbone alone (the state needs no head
    /// tensors and only `features` runs).
    public init(architecture: Architecture, state: StateDict, head withHead: Bool = true) throws {
        try architecture.validate(state, against: withHead ? architecture.parameterSpecs : architecture.backboneSpecs)
        self.architecture = architecture
        let eps = architecture.config.batchNormEpsilon
        func fold(_ conv: String, _ bn: String, _ shape: ConvShape) -> Convolution {
            let (weight, bias) = foldedConvolution(state, conv, batchNorm: bn, shape: shape, epsilon: eps)
            return Convolution(shape, patchMajorWeight: patchMajorWeight(weight, shape), bias: bias)
        }
        stem = fold("conv1", "bn1", architecture.stem)
        blocks = architecture.blocks.map { b in
            FoldedBlock(name: b.name,
                        conv1: fold("\(b.name).conv1", "\(b.name).bn1", b.conv1),
                        conv2: fold("\(b.name).conv2", "\(b.name).bn2", b.conv2),
                        downsample: b.downsample.map { fold("\(b.name).downsample.0", "\(b.name).downsample.1", $0) })
        }
        head = withHead ? FoldedHead(architecture, state: state) : nil
    }

    /// Every convolution in forward order with the geometry of its input, for a batch of this size.
    private func convolutions(_ input: Geometry) -> [(Convolution, Geometry)] {
        let ordered = [stem] + blocks.flatMap { [$0.conv1] + ($0.downsample.map { [$0] } ?? []) + [$0.conv2] }
        return Array(zip(ordered, architecture.convolutionInputs(input)))
    }

    /// Activation buffer sizes, in floats, for a batch of this geometry.
    private func bufferSizes(_ input: Geometry) -> [Int] {
        let width = architecture.config.baseWidth
        let stemOut = input.output(of: architecture.stem)
        // The stem's output is the largest activation; after the max pool, layer1's is (channels double as
        // pixels quarter). Buffer 0 holds the stem output and later serves as a block buffer.
        let pooled = Geometry(batch: input.batch, height: architecture.stemOutputSide(input.height),
                              width: architecture.stemOutputSide(input.width))
        let widest = max(numClasses, head?.scratchWidth ?? 0)
        return [stemOut.pixels * width]
            + Array(repeating: max(pooled.pixels * width, input.batch * max(featureWidth, widest)), count: 3)
    }

    /// Logits for a batch of NHWC images ([count, height, width, 3], already normalised) into `logits`
    /// ([count, numClasses]). Height and width must be at least `ModelConfig.minimumInputSide`.
    public func run(images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                    logits: UnsafeMutablePointer<Float>) {
        precondition(head != nil, "a backbone-only plan has no logits: use features")
        runLanes(images, count: count, height: height, width: width, output: logits, outputWidth: numClasses, head: true)
    }

    /// The pooled backbone features ([count, featureWidth]: the global average of layer4's output), what the
    /// head reads. A frozen backbone's output in training, and Grad-CAM's starting point.
    public func features(images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                         features: UnsafeMutablePointer<Float>) {
        runLanes(images, count: count, height: height, width: width, output: features, outputWidth: featureWidth, head: false)
    }

    /// A batch split across the lanes, each running the network on its share.
    private func runLanes(_ images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                          output: UnsafeMutablePointer<Float>, outputWidth: Int, head: Bool) {
        precondition(count > 0 && height > 0 && width > 0, "empty batch")
        let laneCount = max(1, min(Parallelism.threads, count))
        let laneImages = (count + laneCount - 1) / laneCount
        while lanes.count < laneCount { lanes.append(Workspace()) }
        for lane in lanes { lane.scratch.budget = columnBudget }
        // Decide each convolution's algorithm once for the batch, and build what it needs before lanes share it.
        let input = Geometry(batch: count, height: height, width: width)
        let methods = convolutions(input).map { conv, g in
            let method = conv.method(g, laneImages: laneImages, algorithm: algorithm)
            conv.prepare(method, Geometry(batch: laneImages, height: g.height, width: g.width))
            return method
        }
        let imageFloats = height * width * 3
        if laneCount == 1 {
            // One image (or one thread): let OpenBLAS and the kernels share the work instead.
            forward(images, count: count, height: height, width: width, output, head: head, methods: methods,
                    lanes[0], split: .caller(threads: Parallelism.threads), observer: nil)
            return
        }
        let blasThreads = openblas_get_num_threads()
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(blasThreads) }
        laneThreads.run(laneCount) { lane in
            let first = count * lane / laneCount, end = count * (lane + 1) / laneCount
            forward(images + first * imageFloats, count: end - first, height: height, width: width,
                    output + first * outputWidth, head: head, methods: methods, lanes[lane], split: .caller(threads: 1),
                    observer: nil)
        }
    }

    /// The whole network (or the backbone and pool, without `head`) over one lane's slice of the batch.
    private func forward(_ images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                         _ output: UnsafeMutablePointer<Float>, head withHead: Bool, methods: [Convolution.Method],
                         _ lane: Workspace, split: WorkSplit, observer: LayerObserver?) {
        let input = Geometry(batch: count, height: height, width: width)
        lane.reserve(bufferSizes(input))
        let buf = lane.buffers.map { $0.baseAddress! }
        var next = methods.makeIterator()
        func run(_ conv: Convolution, _ name: String, _ x: UnsafePointer<Float>, _ g: Geometry, _ y: UnsafeMutablePointer<Float>,
                 residual: UnsafePointer<Float>?, relu: Bool) -> Geometry {
            let method = next.next()!
            let out = g.output(of: conv.shape)
            guard let observer else {
                conv.forward(x, g, y, method: method, residual: residual, relu: relu, split: split, scratch: lane.scratch)
                return out
            }
            // Observed: the convolution without its epilogue first, so the observer sees W·x before the bias.
            conv.forward(x, g, y, method: method, addBias: false, split: split, scratch: lane.scratch)
            let count = out.pixels * conv.shape.outChannels
            observer(LayerObservation(name: name, geometry: out, channels: conv.shape.outChannels,
                                      convolution: UnsafeBufferPointer(start: y, count: count), output: nil))
            conv.bias!.withUnsafeBufferPointer { b in
                biasResidualReLU(y, rows: out.pixels, channels: conv.shape.outChannels, bias: b.baseAddress!,
                                 residual: residual, relu: relu, threads: Parallelism.threads)
            }
            observer(LayerObservation(name: name, geometry: out, channels: conv.shape.outChannels, convolution: nil,
                                      output: UnsafeBufferPointer(start: y, count: count)))
            return out
        }
        let threads = if case .caller(let t) = split { t } else { Parallelism.threads }
        // Stem: conv1 + bn1 + ReLU → buffer 0, max pool → buffer 1.
        var g = run(stem, "bn1", images, input, buf[0], residual: nil, relu: true)
        g = maxPool(architecture.maxPool, buf[0], g, channels: stem.shape.outChannels, buf[1], threads: threads)
        // Blocks rotate through four buffers: x (input), t (after conv1), d (downsample), y (output).
        var x = 1, free = [0, 2, 3]
        for block in blocks {
            let t = free[0], y = free[1]
            let mid = run(block.conv1, "\(block.name).bn1", buf[x], g, buf[t], residual: nil, relu: true)
            var residual = buf[x]
            if let ds = block.downsample {
                _ = run(ds, "\(block.name).downsample.1", buf[x], g, buf[free[2]], residual: nil, relu: false)
                residual = buf[free[2]]
            }
            g = run(block.conv2, "\(block.name).bn2", buf[t], mid, buf[y], residual: residual, relu: true)
            free = [x, t, free[2]]
            x = y
        }
        // Head: average pool, then the folded linear layers (ReLU between them).
        let pooled = withHead ? buf[free[0]] : output
        globalAveragePool(buf[x], g, channels: featureWidth, pooled)
        guard withHead, let head else { return }
        head.run(pooled, count: count, logits: output, scratch: buf[free[1]], threads: threads)
    }

    /// The backbone over `images` on one lane, calling `observer` for every convolution twice: with W·x (its
    /// output before the folded bias, what rebuilding a BatchNorm needs) and with the layer's output (after
    /// bias, residual and ReLU, what quantisation and Grad-CAM need). Pooled features go to `features`.
    /// Winograd is not used here: its output transform applies the bias on the way.
    public func observe(images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                        features: UnsafeMutablePointer<Float>, observer: LayerObserver) {
        precondition(count > 0 && height > 0 && width > 0, "empty batch")
        if lanes.isEmpty { lanes.append(Workspace()) }
        lanes[0].scratch.budget = columnBudget
        let methods = convolutions(Geometry(batch: count, height: height, width: width)).map { conv, g in
            var method = conv.method(g, laneImages: count, algorithm: algorithm)
            if method == .winograd { method = algorithm.usesTaps(conv.shape, input: g) ? .tapwise : .im2col }
            conv.prepare(method, g)
            return method
        }
        withoutActuallyEscaping(observer) { observer in
            forward(images, count: count, height: height, width: width, features, head: false, methods: methods, lanes[0],
                    split: .caller(threads: Parallelism.threads), observer: observer)
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

/// What an `InferencePlan` observer is shown of one convolution layer, named by the BatchNorm folded into it
/// (`bn1`, `layer2.0.bn1`, `layer2.0.downsample.1`, …): either the convolution's output before the bias
/// (`convolution`) or the layer's final output (`output`), [pixels, channels] NHWC. Valid during the call only.
public struct LayerObservation {
    public var name: String
    public var geometry: Geometry
    public var channels: Int
    public var convolution: UnsafeBufferPointer<Float>?
    public var output: UnsafeBufferPointer<Float>?
}

public typealias LayerObserver = (LayerObservation) -> Void

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
