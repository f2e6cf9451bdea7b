import COpenBLAS

/// How one call spreads its work over the cores.
enum WorkSplit {
    /// The caller already runs lanes side by side (the inference plan gives each lane a share of the batch):
    /// this call keeps to its own thread, or uses `threads` for its memory-bound passes when it is alone.
    case caller(threads: Int)
    /// This call splits its own work across the training lanes, each part one single-threaded GEMM.
    case lanes

    var laneCount: Int {
        if case .lanes = self { return Parallelism.threads }
        return 1
    }
}

/// Scratch memory for convolutions run one at a time (by one inference lane, or by training's orchestrating
/// thread): the column matrix (or gathered rows, or Winograd's V and M) and, for backward, its gradient.
final class ConvolutionScratch {
    /// Upper bound on one column matrix, in floats: larger batches are processed in chunks, so memory stays flat.
    var budget = EngineTuning.columnBudgetFloats
    let column = FloatBuffer(), columnGradient = FloatBuffer()
}

/// One convolution as the engine runs it, in inference, training and calibration alike: the rule that picks
/// its algorithm for an input size, the chunking and scratch layout, the split across lanes, the forward pass
/// with its fused epilogue (bias, residual, ReLU) and the backward passes. Every client (`InferencePlan`,
/// `Conv2dLayer`, calibration through the plan's observer) goes through here.
///
/// Weight patch-major [Cout, kh, kw, Cin] (im2col's column order); activations NHWC [pixels, channels].
final class Convolution {
    enum Method: Equatable { case pointwise, winograd, tapwise, im2col }

    let shape: ConvShape
    /// The weight: the plan's folded copy, or a trainable parameter's values (kept alive by `owner`).
    let weight: UnsafeMutableBufferPointer<Float>
    /// Added by the epilogue (a folded BatchNorm's shift); nil when a BatchNorm layer follows (training).
    let bias: [Float]?
    private let owner: AnyObject?
    private let ownsWeight: Bool
    /// Changes whenever the weight's values do, so the Winograd form knows to rebuild.
    private let weightVersion: () -> Int
    /// The weight as Winograd F(2x2, 3x3), and the version it was made from.
    private var winograd: (conv: WinogradConv, version: Int)?
    /// Tap lists per input size (height, width); built by `prepare`, read by the lanes.
    private var taps: [Int: TapwiseConv] = [:]

    /// A folded inference convolution owning its weight (patch-major) and bias.
    init(_ shape: ConvShape, patchMajorWeight: [Float], bias: [Float]) {
        self.shape = shape
        weight = .allocate(capacity: patchMajorWeight.count)
        _ = weight.initialize(from: patchMajorWeight)
        self.bias = bias
        owner = nil
        ownsWeight = true
        weightVersion = { 0 }
    }

    /// A training convolution over a parameter's storage (no bias: its BatchNorm follows).
    init(_ shape: ConvShape, parameter: TrainableParameter) {
        self.shape = shape
        weight = parameter.value
        bias = nil
        owner = parameter
        ownsWeight = false
        weightVersion = { [unowned parameter] in parameter.version }
    }

    deinit { if ownsWeight { weight.deallocate() } }

    var isPointwise: Bool { shape.kernel == 1 && shape.stride == 1 && (shape.padding == 0 || shape.samePadding) }

    /// The algorithm for input `g` when each lane computes `laneImages` images of it. Winograd needs a fixed
    /// weight (a trainable one's backward needs the column matrix anyway) and enough tiles per lane to pay.
    func method(_ g: Geometry, laneImages: Int, algorithm: ConvolutionAlgorithm, trainable: Bool = false) -> Method {
        if isPointwise { return .pointwise }
        let lane = Geometry(batch: laneImages, height: g.height, width: g.width)
        if !trainable && algorithm.usesWinograd(shape, laneInput: lane) { return .winograd }
        if algorithm.usesTaps(shape, input: g) { return .tapwise }
        return .im2col
    }

    /// Builds what `method` needs (Winograd's weights, the tap lists) before lanes share this convolution.
    func prepare(_ method: Method, _ g: Geometry) {
        switch method {
        case .winograd:
            let version = weightVersion()
            guard winograd?.version != version else { return }
            winograd = (WinogradConv(patchMajorWeight: Array(weight), bias: bias ?? zeros,
                                     inChannels: shape.inChannels, outChannels: shape.outChannels), version)
        case .tapwise:
            let key = g.height << 32 | g.width
            if taps[key] == nil { taps[key] = TapwiseConv(shape, inputHeight: g.height, width: g.width) }
        case .pointwise, .im2col:
            return
        }
    }

    private var zeros: [Float] { [Float](repeating: 0, count: shape.outChannels) }

    private func tapwise(_ g: Geometry) -> TapwiseConv {
        guard let conv = taps[g.height << 32 | g.width] else { preconditionFailure("tap lists not prepared for \(g)") }
        return conv
    }

    // MARK: Forward

    /// y [N·Ho·Wo, Cout] = conv(x) (+ bias + residual, then ReLU: the epilogue, where there is one) for x
    /// [N·H·W, Cin]. `method` comes from `method(_:laneImages:algorithm:)` and was `prepare`d. Without
    /// `addBias`, y is W·x alone (Winograd always adds it: not for that method).
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, _ y: UnsafeMutablePointer<Float>, method: Method,
                 residual: UnsafePointer<Float>? = nil, relu: Bool = false, addBias: Bool = true,
                 split: WorkSplit, scratch: ConvolutionScratch) {
        precondition(addBias || method != .winograd, "Winograd's output transform adds the bias")
        let bias = addBias ? bias : nil
        let out = g.output(of: shape)
        let w = UnsafePointer(weight.baseAddress!)
        let cout = shape.outChannels, patch = shape.patchSize
        switch method {
        case .winograd:
            forwardWinograd(x, g, y, residual: residual, relu: relu, split: split, scratch: scratch)
            return  // the output transform applied the epilogue
        case .pointwise:
            gemm(out.pixels, x, y, split: split)
        case .tapwise:
            forwardTapwise(tapwise(g), x, g, y, split: split, scratch: scratch)
        case .im2col:
            let chunk = EngineTuning.im2colChunkRows(rows: out.pixels, patch: patch, budget: scratch.budget,
                                                     lanes: split.laneCount)
            let col = scratch.column.reserve(chunk * patch)
            var first = 0
            while first < out.pixels {
                let rows = min(chunk, out.pixels - first), dst = y + first * cout
                switch split {
                case .caller(let threads):
                    im2col(shape, x, g, firstRow: first, rows: rows, col, threads: threads)
                    gemmABt(rows, cout, patch, col, patch, w, patch, dst, cout)
                    epilogue(dst, rows: rows, bias: bias, residual: residual.map { $0 + first * cout }, relu: relu, split: split)
                case .lanes where SplitGEMM.splitsRows(rows, cout):
                    // Each lane fills its own rows of the column and multiplies them: one hand-off, rows still cached.
                    let firstRow = first
                    SplitGEMM.onLanes(rows) { r in
                        let laneCol = col + r.lowerBound * patch
                        im2col(shape, x, g, firstRow: firstRow + r.lowerBound, rows: r.count, laneCol, threads: 1)
                        gemmABt(r.count, cout, patch, laneCol, patch, w, patch, dst + r.lowerBound * cout, cout)
                    }
                case .lanes:
                    let firstRow = first
                    TrainingLanes.forEachRange(rows, minimum: max(1, EngineTuning.copyFloatsPerPart / patch)) { r in
                        im2col(shape, x, g, firstRow: firstRow + r.lowerBound, rows: r.count, col + r.lowerBound * patch, threads: 1)
                    }
                    SplitGEMM.abT(rows, cout, patch, col, patch, w, patch, dst, cout)
                }
                first += rows
            }
            if case .lanes = split { epilogue(y, rows: out.pixels, bias: bias, residual: residual, relu: relu, split: split) }
            return
        }
        epilogue(y, rows: out.pixels, bias: bias, residual: residual, relu: relu, split: split)
    }

    /// y = x · Wᵀ for a 1x1 stride-1 convolution: the activation already is the column matrix.
    private func gemm(_ rows: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, split: WorkSplit) {
        let w = UnsafePointer(weight.baseAddress!), k = shape.patchSize, cout = shape.outChannels
        switch split {
        case .caller: gemmABt(rows, cout, k, x, k, w, k, y, cout)
        case .lanes: SplitGEMM.abT(rows, cout, k, x, k, w, k, y, cout)
        }
    }

    /// + bias + residual, ReLU, in one pass over the output (nothing to do without bias, residual or ReLU).
    private func epilogue(_ y: UnsafeMutablePointer<Float>, rows: Int, bias: [Float]?, residual: UnsafePointer<Float>?,
                          relu: Bool, split: WorkSplit) {
        guard bias != nil || residual != nil || relu else { return }
        let b = bias ?? zeros
        b.withUnsafeBufferPointer { b in
            switch split {
            case .caller(let threads):
                biasResidualReLU(y, rows: rows, channels: shape.outChannels, bias: b.baseAddress!, residual: residual,
                                 relu: relu, threads: threads)
            case .lanes:
                let c = shape.outChannels
                TrainingLanes.forEachRange(rows, minimum: max(1, EngineTuning.elementwiseFloatsPerPart / c)) { r in
                    biasResidualReLU(y + r.lowerBound * c, rows: r.count, channels: c, bias: b.baseAddress!,
                                     residual: residual.map { $0 + r.lowerBound * c }, relu: relu, threads: 1)
                }
            }
        }
    }

    /// Tap by tap. Called by a lane: chunks of images whose gathered input fits the scratch budget. Split across
    /// lanes: they gather the input rows (split by taps), then each multiplies its share of the output channels,
    /// so each reads only its part of the weight.
    private func forwardTapwise(_ conv: TapwiseConv, _ x: UnsafePointer<Float>, _ g: Geometry,
                                _ y: UnsafeMutablePointer<Float>, split: WorkSplit, scratch: ConvolutionScratch) {
        let w = UnsafePointer(weight.baseAddress!), cin = shape.inChannels, cout = shape.outChannels
        switch split {
        case .caller:
            let chunk = max(1, min(g.batch, scratch.budget / max(1, conv.gatheredFloats(images: 1))))
            let gathered = conv.gatheredFloats(images: chunk)
            let column = scratch.column.reserve(gathered + conv.productFloats(images: chunk, columns: cout))
            var first = 0
            while first < g.batch {
                let images = min(chunk, g.batch - first)
                let xChunk = x + first * conv.inputArea * cin
                conv.gather(xChunk, images: images, into: column)
                conv.multiply(xChunk, gathered: column, images: images, weight: w, columns: 0..<cout,
                              output: y + first * conv.outputArea * cout, outputStride: cout, products: column + gathered)
                first += images
            }
        case .lanes:
            let gatheredFloats = conv.gatheredFloats(images: g.batch), perLane = conv.productFloats(images: g.batch, columns: cout)
            let gathered = scratch.column.reserve(gatheredFloats + Parallelism.threads * perLane)
            TrainingLanes.forEachRange(conv.taps.count, minimum: 1) { conv.gather(x, images: g.batch, into: gathered, taps: $0) }
            SplitGEMM.onLanes(cout, minimum: EngineTuning.minimumColumnsPerLane) { lane, columns in
                conv.multiply(x, gathered: gathered, images: g.batch, weight: w, columns: columns, output: y,
                              outputStride: cout, products: gathered + gatheredFloats + lane * perLane)
            }
        }
    }

    /// Winograd F(2x2, 3x3), epilogue in the output transform. Called by a lane: chunk by chunk of tiles. Split
    /// across lanes: when the batch's tiles fit one chunk, the lanes share the input transform and then split
    /// the output channels, so each packs half the weights; otherwise they split the images.
    private func forwardWinograd(_ x: UnsafePointer<Float>, _ g: Geometry, _ y: UnsafeMutablePointer<Float>,
                                 residual: UnsafePointer<Float>?, relu: Bool, split: WorkSplit, scratch: ConvolutionScratch) {
        guard let conv = winograd?.conv else { preconditionFailure("Winograd weights not prepared") }
        let cin = shape.inChannels, cout = shape.outChannels, area = g.height * g.width
        let perLane = conv.scratchFloats
        switch split {
        case .caller:
            conv.run(x, g, y, residual: residual, relu: relu, scratch: scratch.column.reserve(perLane))
        case .lanes where conv.fitsOneChunk(g) && Parallelism.threads > 1:
            let tiles = WinogradConv.tiles(g), buffer = scratch.column.reserve(perLane)
            let (v, m) = conv.transformed(in: buffer, tiles: tiles), zeros = conv.paddingZeros(in: buffer)
            TrainingLanes.forEachRange(tiles, minimum: 1) { conv.transformInput(x, g, tiles: $0, into: v + $0.lowerBound * 16 * cin, zeros: zeros) }
            SplitGEMM.onLanes(cout / 4, minimum: EngineTuning.minimumColumnsPerLane / 8) { quads in
                let columns = 4 * quads.lowerBound ..< 4 * quads.upperBound
                conv.multiply(v, tiles: tiles, into: m, columns: columns)
                conv.transformOutput(m, g, tiles: 0..<tiles, columns: columns, y, residual: residual, relu: relu)
            }
        case .lanes:
            let buffer = scratch.column.reserve(Parallelism.threads * perLane)
            SplitGEMM.onLanes(g.batch, minimum: 1) { lane, images in
                conv.run(x + images.lowerBound * area * cin, Geometry(batch: images.count, height: g.height, width: g.width),
                         y + images.lowerBound * area * cout, residual: residual.map { $0 + images.lowerBound * area * cout },
                         relu: relu, scratch: buffer + lane * perLane)
            }
        }
    }

    // MARK: Backward (training: split across the lanes)

    /// From dy [N·Ho·Wo, Cout] and the forward's input x: dW (when `weightGradient` is given, overwritten) and
    /// dx [N·H·W, Cin] (when given, overwritten).
    func backward(_ x: UnsafePointer<Float>, _ g: Geometry, _ dy: UnsafePointer<Float>,
                  weightGradient dW: UnsafeMutablePointer<Float>?, inputGradient dx: UnsafeMutablePointer<Float>?,
                  algorithm: ConvolutionAlgorithm, scratch: ConvolutionScratch) {
        let out = g.output(of: shape)
        let cout = shape.outChannels, patch = shape.patchSize
        let w = UnsafePointer(weight.baseAddress!)
        let method = method(g, laneImages: g.batch, algorithm: algorithm, trainable: true)
        if method == .pointwise {
            if let dW { SplitGEMM.aTb(cout, patch, out.pixels, dy, cout, x, patch, dW, patch) }
            if let dx { SplitGEMM.ab(out.pixels, patch, cout, dy, cout, w, patch, dx, patch) }
            return
        }
        dx?.update(repeating: 0, count: g.pixels * shape.inChannels)
        if method == .tapwise {
            prepare(.tapwise, g)
            backwardTapwise(tapwise(g), x, g, dy, dW, dx, scratch: scratch)
            return
        }
        // im2col in chunks of whole images: col2im adds each image's columns back onto that image alone.
        let perImage = out.height * out.width
        let chunk = max(1, min(out.batch, scratch.budget / max(1, patch * perImage)))
        let col = scratch.column.reserve(chunk * perImage * patch)
        let dCol = scratch.columnGradient.reserve(dx != nil ? chunk * perImage * patch : 1)
        var first = 0
        while first < out.batch {
            let images = min(chunk, out.batch - first), rows = images * perImage, firstRow = first * perImage
            let dyChunk = dy + firstRow * cout
            if let dW {
                TrainingLanes.forEachRange(rows, minimum: max(1, EngineTuning.copyFloatsPerPart / patch)) { r in
                    im2col(shape, x, g, firstRow: firstRow + r.lowerBound, rows: r.count, col + r.lowerBound * patch, threads: 1)
                }
                SplitGEMM.aTb(cout, patch, rows, dyChunk, cout, col, patch, dW, patch, beta: first == 0 ? 0 : 1)
            }
            if let dx {
                SplitGEMM.ab(rows, patch, cout, dyChunk, cout, w, patch, dCol, patch)
                col2imAdd(shape, dCol, g, firstImage: first, images: images, dx)
            }
            first += images
        }
    }

    /// Tap by tap: dY's rows gathered per tap (and the input again, for dW), then dW split by output channels
    /// and dx by input channels across the lanes.
    private func backwardTapwise(_ conv: TapwiseConv, _ x: UnsafePointer<Float>, _ g: Geometry, _ dy: UnsafePointer<Float>,
                                 _ dW: UnsafeMutablePointer<Float>?, _ dx: UnsafeMutablePointer<Float>?,
                                 scratch: ConvolutionScratch) {
        let cin = shape.inChannels, cout = shape.outChannels, images = g.batch
        let gatheredFloats = dW != nil ? conv.gatheredFloats(images: images) : 0
        let gathered = scratch.column.reserve(max(1, gatheredFloats))
        let dyFloats = conv.gatheredRowsPerImage * images * cout, perLane = conv.productFloats(images: images, columns: cin)
        let dyRows = scratch.columnGradient.reserve(max(1, dyFloats + Parallelism.threads * perLane))
        TrainingLanes.forEachRange(conv.taps.count, minimum: 1) { taps in
            if dW != nil { conv.gather(x, images: images, into: gathered, taps: taps) }
            conv.gatherOutputRows(dy, images: images, into: dyRows, taps: taps)
        }
        if let dW {
            SplitGEMM.onLanes(cout, minimum: EngineTuning.minimumColumnsPerLane) { outputs in
                conv.weightGradient(input: x, gathered: gathered, dy: dy, dyRows: dyRows, images: images, outputs: outputs, dW: dW)
            }
        }
        if let dx {
            let w = UnsafePointer(weight.baseAddress!)
            SplitGEMM.onLanes(cin, minimum: EngineTuning.minimumColumnsPerLane / 2) { lane, inputs in
                conv.addInputGradient(dy: dy, dyRows: dyRows, images: images, weight: w, inputs: inputs, dx: dx,
                                      products: dyRows + dyFloats + lane * perLane)
            }
        }
    }
}
