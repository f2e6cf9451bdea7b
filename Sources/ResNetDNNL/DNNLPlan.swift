import CDNNL
import COpenBLAS
import ResNetModel

/// The eval-mode network on oneDNN in bf16 or int8: every convolution with its BatchNorm folded, bias, residual
/// (a sum post-op into the residual's own buffer) and ReLU fused, layouts chosen by oneDNN and kept from layer to
/// layer, weights reordered (and for int8 quantised per output channel) once per layout oneDNN asks for; the max pool in
/// oneDNN too. Global pooling and the head run in fp32. Accumulation is fp32 (bf16) or int32 (int8).
///
/// Primitives are built per input shape (batch, height, width) and kept, so a run of equal batches builds once.
/// A batch is split across `Parallelism.threads` lanes, each running its own primitives, stream and scratchpad
/// with one OpenMP thread (as the fp32 plan splits its lanes): no OpenMP barriers between the cores, which cost
/// much when other work (the TIFF decoders, other processes) shares them. A single image runs on one lane with
/// all threads. Not thread-safe: one plan per thread.
public final class DNNLPlan: InferenceEngine {
    public let architecture: Architecture
    public let precision: Precision
    let scales: ActivationScales?
    /// Where bf16's convolutions skip multiply-adds oneDNN's kernels do: 3x3 stride-1 ones as Winograd F(2x2, 3x3)
    /// (`WinogradBF16`), those on maps of a few pixels by taps, without the padding (`TapwiseBF16`).
    enum WorkSaving { case never, wherePays, wherever }
    let workSaving: WorkSaving

    struct Layer {
        var name: String
        var shape: ConvShape
        /// Folded, torchvision order [out, in, kh, kw].
        var weight: [Float]
        var bias: [Float]
        /// int8: per output channel, quantisation levels per unit (127 / max |w|); nil for bf16.
        var weightScales: [Float]?
    }
    let stem: Layer
    let blocks: [(name: String, conv1: Layer, conv2: Layer, downsample: Layer?)]
    let head: FoldedHead

    private var networks: [Shape: Network] = [:]
    /// Each layer's weights in the layouts its primitives asked for, shared by every lane and batch shape that asks
    /// for the same layout: reordering (and quantising) them is much of what building a shape costs.
    private var packedWeights: [String: [(desc: dnnl_memory_desc_t, memory: Memory)]] = [:]
    private let laneThreads = LaneThreads()
    private let pooled = FloatBuffer(), hidden = FloatBuffer()

    public var numClasses: Int { architecture.config.numClasses }
    public var featureWidth: Int { architecture.config.featureWidth }

    /// Fails with a one-line error when the CPU cannot run this precision at a useful speed (oneDNN has no
    /// kernels below AVX-512 for bf16, below AVX2 for int8), or int8 lacks activation scales.
    /// `workSaving` (Winograd, taps): nil where it pays (bf16 on CPUs with native bf16 dot products and no AMX;
    /// each layer by its rule), true wherever it applies, false nowhere.
    public init(architecture: Architecture, state: StateDict, precision: Precision, scales: ActivationScales? = nil,
                workSaving: Bool? = nil) throws {
        guard precision != .fp32 else { throw DNNLError("DNNLPlan runs bf16 or int8; fp32 runs on InferencePlan") }
        try architecture.validate(state)
        let context = DNNLContext.shared
        if case .failure(let error) = context { throw error }
        switch precision {
        case .bf16 where !DNNLRuntime.atLeast(dnnl_cpu_isa_avx512_core):
            throw DNNLError("--precision bf16 needs a CPU with AVX-512 (oneDNN reports \(DNNLRuntime.isa)); use --precision fp32")
        case .int8 where !DNNLRuntime.atLeast(dnnl_cpu_isa_avx2):
            throw DNNLError("--precision int8 needs a CPU with AVX2 (oneDNN reports \(DNNLRuntime.isa)); use --precision fp32")
        case .int8 where scales == nil:
            throw DNNLError("the model has no int8 activation scales: run `resnetkit quantize MODEL --calibrate DIR` first")
        default: break
        }
        if precision == .int8, let scales {
            let missing = architecture.namedConvolutions.map(\.batchNorm).filter { scales.maxima[$0] == nil }
            guard missing.isEmpty, scales.input > 0 else {
                throw DNNLError("the model's int8 scales lack \(missing.first ?? "the input"): rerun `resnetkit quantize`")
            }
        }
        self.architecture = architecture
        self.precision = precision
        self.scales = scales
        if precision != .bf16 || workSaving == false {
            self.workSaving = .never
        } else {
            self.workSaving = workSaving == true ? .wherever : Self.workSavingPays ? .wherePays : .never
        }
        let eps = architecture.config.batchNormEpsilon
        func fold(_ conv: String, _ bn: String, _ shape: ConvShape) -> Layer {
            let (weight, bias) = foldedConvolution(state, conv, batchNorm: bn, shape: shape, epsilon: eps)
            let scales = precision != .int8 ? nil : (0..<shape.outChannels).map { o in
                let m = weight[(o * shape.patchSize)..<((o + 1) * shape.patchSize)].reduce(Float(0)) { max($0, abs($1)) }
                return m > 0 ? 127 / m : 1
            }
            return Layer(name: bn, shape: shape, weight: weight, bias: bias, weightScales: scales)
        }
        stem = fold("conv1", "bn1", architecture.stem)
        blocks = architecture.blocks.map { b in
            (b.name, fold("\(b.name).conv1", "\(b.name).bn1", b.conv1), fold("\(b.name).conv2", "\(b.name).bn2", b.conv2),
             b.downsample.map { fold("\(b.name).downsample.0", "\(b.name).downsample.1", $0) })
        }
        head = FoldedHead(architecture, state: state)
    }

    /// One lane's primitives for a slice of `batch` images (lanes with equal slices still own separate networks),
    /// run with `threads` OpenMP threads: oneDNN fixes a primitive's thread count when it creates it, from the
    /// creating thread's setting, so a network made at the default would start a team of its own in every lane.
    struct Shape: Hashable {
        var batch: Int, height: Int, width: Int
        var lane = 0
        var threads = 1
    }

    /// The implementation oneDNN chose for each kind of convolution (`7x7/2 3→64: brgconv:avx512_core_bf16`),
    /// for a batch of this shape (its first lane's, the networks a run of it uses).
    public func implementations(batch: Int, height: Int, width: Int) throws -> [String] {
        let network = try laneNetworks(batch, height: height, width: width)[0]
        var seen = Set<String>(), lines: [String] = []
        for (kind, impl) in network.implementations where seen.insert(kind + impl).inserted { lines.append("\(kind): \(impl)") }
        return lines
    }

    /// `layer`'s weights in the layout `desc` (quantised per output channel for int8), reordered on first request.
    /// With `denseAt`, the weights of the layer as a dense one on inputs of that size (`denseWeight`).
    func packedWeight(_ layer: Layer, _ desc: dnnl_memory_desc_t, denseAt side: (Int, Int)? = nil) throws -> Memory {
        try weights(layer.name, desc) {
            var weight: [Float], userDesc: dnnl_memory_desc_t, rows: Int
            if let side {
                // Stored [outputs, inputs]; a matmul's weights are [inputs, outputs], hence `ba`.
                (weight, rows) = (Self.denseWeight(layer, side), layer.shape.outputs(side))
                userDesc = try memoryDesc([layer.shape.inputs(side), rows], dnnl_f32, dnnl_ba)
            } else {
                (weight, rows) = (layer.weight, layer.shape.outChannels)
                userDesc = try memoryDesc(layer.shape.weightShape, dnnl_f32, dnnl_oihw)
            }
            // Rows are output channels, or (pixel, output channel) in the dense form.
            let scales = layer.weightScales.map { perChannel in (0..<rows).map { perChannel[$0 % perChannel.count] } }
            return (weight, userDesc, try scales.map { try Attributes(outputScales: $0, mask: side == nil ? 1 : 1 << 1) })
        }
    }

    /// `layer`'s Winograd weights U = G g Gᵀ ([16, Cin, Cout]) in the layout `desc`, bf16, made on first request.
    func winogradWeight(_ layer: Layer, _ desc: dnnl_memory_desc_t) throws -> Memory {
        try weights(layer.name + " (Winograd)", desc) {
            let s = layer.shape
            let u = WinogradConv.transformedWeight(patchMajor: patchMajorWeight(layer.weight, s), inChannels: s.inChannels,
                                                   outChannels: s.outChannels)
            return (u, try WinogradBF16.transformedWeightLayout(s), nil)
        }
    }

    /// Tap t's weight of `layer` ([Cin, Cout]) in the layout `desc`, bf16, made on first request.
    func tapWeight(_ layer: Layer, _ tap: Int, _ desc: dnnl_memory_desc_t) throws -> Memory {
        try weights(layer.name + " (tap \(tap))", desc) {
            let s = layer.shape, taps = s.kernel * s.kernel
            // Stored [Cout, Cin] (OIHW's tap t): dims [Cin, Cout] in `ba` order.
            let w = (0..<(s.outChannels * s.inChannels)).map { layer.weight[$0 * taps + tap] }
            return (w, try memoryDesc([s.inChannels, s.outChannels], dnnl_f32, dnnl_ba), nil)
        }
    }

    /// Weights kept under `key` in the layout `desc`, shared by every lane and batch shape that asks for it: made
    /// on first request by one reorder of `make`'s fp32 values (in the layout it names, with its attributes).
    private func weights(_ key: String, _ desc: dnnl_memory_desc_t,
                         _ make: () throws -> (values: [Float], layout: dnnl_memory_desc_t, attributes: Attributes?)) throws -> Memory {
        var wanted = desc
        for var known in packedWeights[key, default: []] where dnnl_memory_desc_equal(&known.desc, &wanted) != 0 {
            return known.memory
        }
        var (values, layout, attributes) = try make()
        let packed = try Memory(desc)
        try values.withUnsafeMutableBytes { raw in
            try Primitive.reorder(try Memory(layout, buffer: raw.baseAddress!), packed, attributes: attributes)
        }
        packedWeights[key, default: []].append((desc, packed))
        return packed
    }

    /// `workSaving` as the environment sets it for every command and benchmark: RESNETKIT_WINOGRAD `off` (or `0`)
    /// turns the work-saving layers off, `auto` (or unset, `on`, `1`) leaves the plans' rules; anything else fails.
    public static func workSaving(environment: [String: String]) throws -> Bool? {
        switch environment["RESNETKIT_WINOGRAD"]?.lowercased() {
        case nil, "", "auto", "on", "1": return nil
        case "off", "0": return false
        case let other?: throw DNNLError("RESNETKIT_WINOGRAD is '\(other)': use auto or off")
        }
    }

    /// Winograd and taps pay where the CPU multiplies bf16 with AVX512_BF16's dot products; with AMX's tiles the
    /// multiplies they save are several times cheaper than their transforms, gathers and sums (not measured there).
    static var workSavingPays: Bool {
        DNNLRuntime.atLeast(dnnl_cpu_isa_avx512_core_bf16) && !DNNLRuntime.atLeast(dnnl_cpu_isa_avx512_core_amx)
    }

    /// Whether every output pixel's window covers the whole input (a 3x3/1 convolution on 2x2 or smaller, as
    /// layer4 sees at 49x49): the convolution is then a dense layer from an image's NHWC (pixel, channel) vector to
    /// the output's, and no multiply-add is spent on padding, where a convolution kernel spends over half of them.
    static func windowsCoverInput(_ s: ConvShape, _ side: (Int, Int)) -> Bool {
        // A tap joins one output pixel to one input pixel: every pair has one when the windows cover the input.
        s.taps(side).count == s.outputSide(side.0) * s.outputSide(side.1) * side.0 * side.1
    }

    /// The dense form of a convolution whose windows cover its input of size `side`: [outputs, inputs] with
    /// rows (oy, ox, o) and columns (iy, ix, i): w[o, i, iy − oy·stride + padTop, ix − ox·stride + padLeft].
    static func denseWeight(_ layer: Layer, _ side: (Int, Int)) -> [Float] {
        let s = layer.shape, taps = s.kernel * s.kernel, columns = s.inputs(side)
        var dense = [Float](repeating: 0, count: s.outputs(side) * columns)
        for (p, q, t) in s.taps(side) {
            for o in 0..<s.outChannels {
                let row = (p * s.outChannels + o) * columns + q * s.inChannels
                for i in 0..<s.inChannels { dense[row + i] = layer.weight[(o * s.inChannels + i) * taps + t] }
            }
        }
        return dense
    }

    private func network(_ shape: Shape) throws -> Network {
        if let n = networks[shape] { return n }
        // Keep a few shapes (a full batch and a last partial one, usually); drop the rest.
        if networks.count >= 8 { networks.removeAll() }
        let n = try DNNLRuntime.withThreads(shape.threads) { try Network(self, shape) }
        networks[shape] = n
        return n
    }

    /// Each lane's network for a batch of `count` images.
    private func laneNetworks(_ count: Int, height: Int, width: Int) throws -> [Network] {
        let ranges = Self.laneRanges(count)
        let threads = ranges.count == 1 ? Parallelism.threads : 1
        return try ranges.enumerated().map { lane, range in
            try network(Shape(batch: range.count, height: height, width: width, lane: lane, threads: threads))
        }
    }

    public func run(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, logits: UnsafeMutablePointer<Float>) throws {
        try runChecked(images: images, count: count, height: height, width: width, output: logits, head: true)
    }

    public func features(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, features: UnsafeMutablePointer<Float>) throws {
        try runChecked(images: images, count: count, height: height, width: width, output: features, head: false)
    }

    /// Builds the primitives for a shape ahead of `run` (which would build them on first use), so that a
    /// benchmark's timed loop does not include building them.
    public func prepare(batch: Int, height: Int, width: Int) throws {
        _ = try laneNetworks(batch, height: height, width: width)
    }

    /// Each lane's share of a batch of `count` images, in order: at most `lanes` non-empty ranges, the last the
    /// largest (shared by the inference plan and the bf16 training plans).
    static func laneRanges(_ count: Int, lanes: Int = Parallelism.threads) -> [Range<Int>] {
        let laneCount = max(1, min(lanes, count))
        return (0..<laneCount).map { count * $0 / laneCount ..< count * ($0 + 1) / laneCount }
    }

    /// Whether any batch shape has been built.
    public var hasPrepared: Bool { !networks.isEmpty }

    private func runChecked(images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                            output: UnsafeMutablePointer<Float>, head withHead: Bool) throws {
        precondition(count > 0 && height >= ModelConfig.minimumInputSide && width >= ModelConfig.minimumInputSide,
                     "batch of \(count) \(height)x\(width) images")
        let ranges = Self.laneRanges(count)
        let networks = try laneNetworks(count, height: height, width: width)
        let imageFloats = height * width * 3
        // Global average pool of layer4's NHWC fp32 output, then the folded linear layers: in each lane on its own
        // rows, OpenBLAS single-threaded meanwhile (a head run on OpenBLAS's threads leaves its worker spinning in
        // sched_yield for a while after, taking a sixth of the cores from the next batch's convolutions).
        let channels = featureWidth
        let pooledFeatures = withHead ? pooled.reserve(count * channels) : output
        let scratch = hidden.reserve(count * max(1, head.scratchWidth))
        let threads = ranges.count == 1 ? Parallelism.threads : 1
        // Each lane writes only its own slot of `failures` and its own rows of the outputs.
        var failures = [Error?](repeating: nil, count: ranges.count)
        failures.withUnsafeMutableBufferPointer { failures in
            let failures = failures
            let blasThreads = openblas_get_num_threads(), wanted = Int32(threads)
            if blasThreads != wanted { openblas_set_num_threads(wanted) }
            defer { if blasThreads != wanted { openblas_set_num_threads(blasThreads) } }
            laneThreads.run(ranges.count) { lane in
                let range = ranges[lane]
                DNNLRuntime.setThreads(threads)
                do {
                    let pixels = try networks[lane].forward(images + range.lowerBound * imageFloats)
                    let area = pixels.count / (range.count * channels)
                    let features = pooledFeatures + range.lowerBound * channels
                    globalAveragePool(pixels.baseAddress!, Geometry(batch: range.count, height: area, width: 1),
                                      channels: channels, features)
                    guard withHead else { return }
                    head.run(features, count: range.count, logits: output + range.lowerBound * numClasses,
                             scratch: scratch + range.lowerBound * head.scratchWidth, threads: threads)
                } catch {
                    failures[lane] = error
                }
            }
        }
        if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
    }

    /// Convenience for tests: NHWC images in, logits out.
    public func run(images: [Float], count: Int, height: Int, width: Int) throws -> [Float] {
        precondition(images.count == count * height * width * 3, "image data does not match \(count)x\(height)x\(width)x3")
        var logits = [Float](repeating: 0, count: count * numClasses)
        try images.withUnsafeBufferPointer { img in
            try logits.withUnsafeMutableBufferPointer { out in
                try run(images: img.baseAddress!, count: count, height: height, width: width, logits: out.baseAddress!)
            }
        }
        return logits
    }
}

extension ConvShape {
    /// Length of an image's NHWC vector at input size `side`, and at the output size it gives.
    func inputs(_ side: (Int, Int)) -> Int { side.0 * side.1 * inChannels }
    func outputs(_ side: (Int, Int)) -> Int { outputSide(side.0) * outputSide(side.1) * outChannels }

    /// Every (output pixel p, input pixel q, tap t = ky·k + kx) where tap t of output p's window lands on input q
    /// (inside the input, not on padding), for an input of `side`; pixels row-major.
    func taps(_ side: (Int, Int)) -> [(p: Int, q: Int, t: Int)] {
        let out = (outputSide(side.0), outputSide(side.1)), (top, left) = (pads(side.0).before, pads(side.1).before)
        var list: [(p: Int, q: Int, t: Int)] = []
        for oy in 0..<out.0 { for ox in 0..<out.1 { for ky in 0..<kernel { for kx in 0..<kernel {
            let iy = oy * stride - top + ky, ix = ox * stride - left + kx
            guard (0..<side.0).contains(iy), (0..<side.1).contains(ix) else { continue }
            list.append((oy * out.1 + ox, iy * side.1 + ix, ky * kernel + kx))
        } } } }
        return list
    }
}

/// The primitives and memories for one input shape.
final class Network {
    enum Step {
        case primitive(Primitive, [(Int32, Memory)])
        /// Transforms on the lane's thread around a matmul, after the stream has finished the steps before.
        case winograd(WinogradBF16)
        /// Gathers and sums on the lane's thread around a matmul per tap, likewise.
        case taps(TapwiseBF16)
    }

    /// A layer's padding for input of (height, width): [top, left] before, [bottom, right] after (TensorFlow's
    /// 'same' can put one more pixel after than before).
    static func padding(_ s: ConvShape, _ side: (Int, Int)) -> ([dnnl_dim_t], [dnnl_dim_t]) {
        let h = s.pads(side.0), w = s.pads(side.1)
        return ([dnnl_dim_t(h.before), dnnl_dim_t(w.before)], [dnnl_dim_t(h.after), dnnl_dim_t(w.after)])
    }
    private var steps: [Step] = []
    /// The caller's fp32 NHWC images (handle set per run) and layer4's output as fp32 NHWC.
    private let input: Memory
    private var output: Memory!
    private var outputCount = 0
    /// Weights and biases in oneDNN's layouts, kept alive for the primitives.
    private var constants: [Memory] = []
    /// (kind of convolution, implementation), in forward order.
    private(set) var implementations: [(String, String)] = []
    private let stream: Stream
    /// One scratchpad for all steps (they run one after another), as large as the largest needs; likewise one
    /// workspace for the Winograd and by-taps layers' own buffers.
    private var scratchpad: Memory!
    private let workspace = FloatBuffer()

    init(_ plan: DNNLPlan, _ shape: DNNLPlan.Shape) throws {
        stream = try Stream()
        let int8 = plan.precision == .int8
        let activation: dnnl_data_type_t = int8 ? dnnl_u8 : dnnl_bf16
        let n = shape.batch
        let userInput = try memoryDesc([n, 3, shape.height, shape.width], dnnl_f32, dnnl_nhwc)
        input = try Memory(userInput, buffer: UnsafeMutableRawPointer(bitPattern: 1)!)

        /// Quantisation scale (levels per unit) of a layer's output: u8 after ReLU, s8 for a downsample's output.
        func scale(_ name: String, signed: Bool) -> Float {
            guard int8, let scales = plan.scales, let maximum = scales.maxima[name], maximum > 0 else { return 1 }
            return (signed ? 127 : 255) / maximum
        }

        /// Whether `desc` is plain NHWC (the layout brgconv picks for activations; a blocked one does not read as
        /// an image's (pixel, channel) vector).
        func isNHWC(_ desc: dnnl_memory_desc_t, channels: Int, side: (Int, Int)) throws -> Bool {
            var given = desc, plain = try memoryDesc([n, channels, side.0, side.1], desc.data_type, dnnl_nhwc)
            return dnnl_memory_desc_equal(&given, &plain) != 0
        }

        // One convolution: returns its destination memory. `src` carries the input's layout and scale;
        // with `into`, the output is written over that memory (the residual) through a sum post-op.
        // Where its windows cover the whole input, it runs as a dense layer (a matmul) on the NHWC vectors, unless
        // oneDNN has only a reference implementation of that here.
        func convolution(_ layer: DNNLPlan.Layer, _ src: Memory, srcScale: Float, inSide: (Int, Int),
                         into residual: (memory: Memory, scale: Float)? = nil, relu: Bool, signedOutput: Bool = false) throws
            -> (Memory, Float, (Int, Int)) {
            let s = layer.shape
            let out = (s.outputSide(inSide.0), s.outputSide(inSide.1))
            let outType: dnnl_data_type_t = signedOutput && int8 ? dnnl_s8 : activation
            let weightType: dnnl_data_type_t = int8 ? dnnl_s8 : dnnl_bf16
            let dstScale = scale(layer.name, signed: signedOutput)
            // int8: weights quantised per output channel; the int32 accumulator (bias included) is
            // scaled to the output's levels.
            let weightScales = layer.weightScales ?? [Float](repeating: 1, count: s.outChannels)

            struct Described { var primitive: Primitive, src: dnnl_memory_desc_t, dst: dnnl_memory_desc_t, bias: dnnl_memory_desc_t
                               var outputs: Int, dense: Bool }
            func describe(dense: Bool) throws -> Described {
                // Outputs per image that a bias and scale belong to: each channel's, or each (pixel, channel)'s if dense.
                let outputs = dense ? s.outputs(inSide) : s.outChannels
                let attributes = try Attributes(
                    outputScales: int8 ? (0..<outputs).map { dstScale / (srcScale * weightScales[$0 % s.outChannels]) } : nil,
                    sum: residual.map { (int8 ? dstScale / $0.scale : 1, $0.memory.desc.data_type) },
                    relu: relu, userScratchpad: true)
                if dense {
                    var srcMD = try memoryDesc([n, s.inputs(inSide)], src.desc.data_type, dnnl_ab)
                    var weightsAny = try memoryDesc([s.inputs(inSide), outputs], weightType, dnnl_format_tag_any)
                    var biasMD = try memoryDesc([1, outputs], dnnl_f32, dnnl_ab)
                    var dstMD = try memoryDesc([n, outputs], outType, dnnl_ab)
                    var desc = dnnl_matmul_desc_t()
                    try check(dnnl_matmul_desc_init(&desc, &srcMD, &weightsAny, &biasMD, &dstMD), "describing \(layer.name) as a dense layer")
                    let primitive = try Primitive(&desc, attributes: attributes, what: "\(layer.name) as a dense layer")
                    return Described(primitive: primitive, src: srcMD, dst: dstMD, bias: biasMD, outputs: outputs, dense: true)
                }
                var srcMD = src.desc
                var dstMD: dnnl_memory_desc_t
                if let residual {
                    dstMD = residual.memory.desc
                    dstMD.data_type = outType
                } else {
                    dstMD = try memoryDesc([n, s.outChannels, out.0, out.1], outType, dnnl_format_tag_any)
                }
                let weightsAny = try memoryDesc(s.weightShape, weightType, dnnl_format_tag_any)
                let biasMD = try memoryDesc([outputs], dnnl_f32, dnnl_x)
                let strides = [dnnl_dim_t(s.stride), dnnl_dim_t(s.stride)]
                let (padBefore, padAfter) = Self.padding(s, inSide)
                var desc = dnnl_convolution_desc_t()
                try check(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct, &srcMD, [weightsAny],
                                                             [biasMD], [dstMD], strides, padBefore, padAfter),
                          "describing \(layer.name)'s convolution")
                let primitive = try Primitive(&desc, attributes: attributes, what: "\(layer.name)'s convolution")
                return Described(primitive: primitive, src: srcMD, dst: primitive.md(dnnl_query_dst_md), bias: biasMD,
                                 outputs: outputs, dense: false)
            }
            let kind = "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels)"
            // bf16 layers that skip work (NHWC activations only): by taps on maps of at most 9 output pixels where the
            // padding is a large share (`TapwiseBF16.pays`), else Winograd where it applies, covers the map well and
            // the lane has tiles enough for the weights (the fp32 engine's rules); neither where one dense matmul
            // does the layer (no padding, no transforms).
            let laneInput = Geometry(batch: n, height: inSide.0, width: inSide.1)
            let everywhere = plan.workSaving == .wherever, coversInput = DNNLPlan.windowsCoverInput(s, inSide)
            let nhwc = try isNHWC(src.desc, channels: s.inChannels, side: inSide)
                && (residual.map { try isNHWC($0.memory.desc, channels: s.outChannels, side: out) } ?? true)
            let byTaps = TapwiseBF16.applies(s, inSide) && (everywhere || TapwiseBF16.pays(s, inSide))
            let winograd = WinogradBF16.applies(s, inSide) && (everywhere || WinogradBF16.pays(s, laneInput: laneInput))
            if plan.workSaving != .never, byTaps || winograd, nhwc {
                let dst = try residual?.memory ?? Memory(try memoryDesc([n, s.outChannels, out.0, out.1], dnnl_bf16, dnnl_nhwc))
                if byTaps {
                    let step = try TapwiseBF16(layer: layer, batch: n, side: inSide, src: src, dst: dst, addResidual: residual != nil,
                                               relu: relu, workspace: workspace, weights: { try plan.tapWeight(layer, $0, $1) })
                    steps.append(.taps(step))
                    implementations.append(("\(kind) on \(inSide.0)x\(inSide.1) by taps", step.implementation))
                } else {
                    let step = try WinogradBF16(layer: layer, batch: n, side: inSide, src: src, dst: dst, addResidual: residual != nil,
                                                relu: relu, workspace: workspace, weights: { try plan.winogradWeight(layer, $0) })
                    steps.append(.winograd(step))
                    implementations.append(("\(kind) on \(inSide.0)x\(inSide.1) as Winograd", step.implementation))
                }
                constants += [src, dst]
                return (dst, 1, out)
            }
            let dense = coversInput && nhwc ? (try? describe(dense: true)).flatMap { $0.primitive.implementation.hasPrefix("ref") ? nil : $0 } : nil
            let made = try dense ?? describe(dense: false)

            implementations.append((made.dense ? "\(kind) on \(inSide.0)x\(inSide.1) as dense" : kind, made.primitive.implementation))
            let weights = try plan.packedWeight(layer, made.primitive.md(dnnl_query_weights_md), denseAt: made.dense ? inSide : nil)
            let bias = try Memory(made.bias)
            let b = bias.data.assumingMemoryBound(to: Float.self)
            for j in 0..<made.outputs {
                let o = j % s.outChannels
                b[j] = layer.bias[o] * (int8 ? srcScale * weightScales[o] : 1)
            }
            constants += [weights, bias]

            let source = made.dense ? try Memory(made.src, buffer: src.data) : src
            let dst: Memory
            if let residual {
                dst = try Memory(made.dst, buffer: residual.memory.data)
                constants.append(residual.memory)
            } else {
                dst = try Memory(made.dst)
            }
            steps.append(.primitive(made.primitive, [(DNNL_ARG_SRC, source), (DNNL_ARG_WEIGHTS, weights),
                                                     (DNNL_ARG_BIAS, bias), (DNNL_ARG_DST, dst)]))
            guard made.dense else { return (dst, dstScale, out) }
            // The next layer reads the dense layer's [n, pixels · channels] output as the NHWC tensor it is.
            constants += [source, dst]
            return (try Memory(try memoryDesc([n, s.outChannels, out.0, out.1], outType, dnnl_nhwc), buffer: dst.data), dstScale, out)
        }

        // Stem source: the stem's own choice of layout; images arrive as fp32 NHWC and are reordered (and for int8
        // quantised to s8) into it.
        let stemShape = plan.stem.shape
        let inputScale: Float = int8 ? 127 / plan.scales!.input : 1
        let stemSrcMD: dnnl_memory_desc_t
        do {
            var srcAny = try memoryDesc([n, 3, shape.height, shape.width], int8 ? dnnl_s8 : dnnl_bf16, dnnl_format_tag_any)
            let weightsAny = try memoryDesc([stemShape.outChannels, 3, 7, 7], int8 ? dnnl_s8 : dnnl_bf16, dnnl_format_tag_any)
            let out = (stemShape.outputSide(shape.height), stemShape.outputSide(shape.width))
            let dstAny = try memoryDesc([n, stemShape.outChannels, out.0, out.1], activation, dnnl_format_tag_any)
            var desc = dnnl_convolution_desc_t()
            let st: [dnnl_dim_t] = [2, 2], (padBefore, padAfter) = Self.padding(stemShape, (shape.height, shape.width))
            try check(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct, &srcAny, [weightsAny],
                                                         nil, [dstAny], st, padBefore, padAfter), "describing the stem")
            let probe = try Primitive(&desc, attributes: int8 ? try Attributes(outputScales: [1]) : nil, what: "the stem")
            stemSrcMD = probe.md(dnnl_query_src_md)
        }
        let stemSrc = try Memory(stemSrcMD)
        let toStem = try Primitive(reorderFrom: userInput, to: stemSrcMD,
                                   attributes: try Attributes(outputScales: int8 ? [inputScale] : nil, userScratchpad: true))
        steps.append(.primitive(toStem, [(DNNL_ARG_FROM, input), (DNNL_ARG_TO, stemSrc)]))
        var (x, xScale, side) = try convolution(plan.stem, stemSrc, srcScale: inputScale, inSide: (shape.height, shape.width), relu: true)

        // Max pool 3x3/2 pad 1 in the stem output's layout and type (the scale carries over).
        do {
            let poolShape = plan.architecture.maxPool
            let k = poolShape.kernel, st = poolShape.stride, (padBefore, padAfter) = Self.padding(poolShape, side)
            let out = (poolShape.outputSide(side.0), poolShape.outputSide(side.1))
            var srcMD = x.desc
            var dstMD = try memoryDesc([n, stemShape.outChannels, out.0, out.1], activation, dnnl_format_tag_any)
            var desc = dnnl_pooling_v2_desc_t()
            let d = dnnl_dim_t.self
            try check(dnnl_pooling_v2_forward_desc_init(&desc, dnnl_forward_inference, dnnl_pooling_max, &srcMD, &dstMD,
                                                        [d.init(st), d.init(st)], [d.init(k), d.init(k)], [0, 0],
                                                        padBefore, padAfter), "describing the max pool")
            let pool = try Primitive(&desc, attributes: try Attributes(userScratchpad: true), what: "the max pool")
            implementations.append(("max pool", pool.implementation))
            let pooled = try Memory(pool.md(dnnl_query_dst_md))
            steps.append(.primitive(pool, [(DNNL_ARG_SRC, x), (DNNL_ARG_DST, pooled)]))
            constants.append(x)
            x = pooled
            side = out
        }

        for block in plan.blocks {
            let (t, tScale, mid) = try convolution(block.conv1, x, srcScale: xScale, inSide: side, relu: true)
            var residual = (memory: x, scale: xScale)
            if let ds = block.downsample {
                let (d, dScale, _) = try convolution(ds, x, srcScale: xScale, inSide: side, relu: false, signedOutput: true)
                residual = (d, dScale)
            }
            constants.append(x)
            (x, xScale, side) = try convolution(block.conv2, t, srcScale: tScale, inSide: mid, into: residual, relu: true)
            constants.append(t)
        }

        // layer4's output → fp32 NHWC (dequantised for int8) for the pooling and head.
        let channels = plan.featureWidth
        let outMD = try memoryDesc([n, channels, side.0, side.1], dnnl_f32, dnnl_nhwc)
        output = try Memory(outMD)
        outputCount = n * channels * side.0 * side.1
        let fromLast = try Primitive(reorderFrom: x.desc, to: outMD,
                                     attributes: try Attributes(outputScales: int8 ? [1 / xScale] : nil, userScratchpad: true))
        steps.append(.primitive(fromLast, [(DNNL_ARG_FROM, x), (DNNL_ARG_TO, output)]))
        constants.append(x)
        let scratchBytes = steps.map { step in
            switch step {
            case .primitive(let primitive, _): primitive.scratchpadSize
            case .winograd(let winograd): winograd.scratchpadSize
            case .taps(let taps): taps.scratchpadSize
            }
        }.max() ?? 0
        scratchpad = try Memory(try memoryDesc([max(1, scratchBytes)], dnnl_u8, dnnl_x))
        steps = steps.map { step in
            guard case .primitive(let primitive, let args) = step else { return step }
            return .primitive(primitive, args + [(DNNL_ARG_SCRATCHPAD, scratchpad)])
        }
    }

    /// Runs the backbone on `images` (fp32 NHWC) and returns layer4's output, fp32 NHWC, valid until the next call.
    func forward(_ images: UnsafePointer<Float>) throws -> UnsafeBufferPointer<Float> {
        input.setData(UnsafeMutableRawPointer(mutating: images))
        for step in steps {
            switch step {
            case .primitive(let primitive, let args): try primitive.execute(args, on: stream)
            case .winograd(let winograd):
                try stream.wait()
                try winograd.run(stream, scratchpad)
            case .taps(let taps):
                try stream.wait()
                try taps.run(stream, scratchpad)
            }
        }
        try stream.wait()
        return UnsafeBufferPointer(start: output.data.assumingMemoryBound(to: Float.self), count: outputCount)
    }
}
