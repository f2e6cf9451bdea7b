import CDNNL
import ResNetModel

/// Mixed-precision training on oneDNN: what `TrainableResNet.setConvolutions` and `frozenBackboneEngine` take
/// for `fine-tune --precision bf16`.
///
/// As PyTorch's CPU autocast does, only the convolutions run in bf16 (inputs and weights rounded to bf16, fp32
/// accumulation, fp32 outputs and gradients); the master weights, AdamW, BatchNorm and its statistics, the loss
/// and the head stay fp32. No loss scaling: bf16 keeps fp32's 8-bit exponent, so gradients that fp32 can hold do
/// not underflow in bf16 (fp16's 5-bit exponent is what loss scaling is for); bf16 only loses mantissa bits.
public enum BF16Training {
    /// Fails with a one-line error when oneDNN has no bf16 kernels worth using on this CPU.
    public static func checkCPU() throws {
        if case .failure(let error) = DNNLContext.shared { throw error }
        guard DNNLRuntime.atLeast(dnnl_cpu_isa_avx512_core) else {
            throw DNNLError("--precision bf16 needs a CPU with AVX-512 (oneDNN reports \(DNNLRuntime.isa)); use --precision fp32")
        }
    }

    public static let convolutions: TrainingConvolutionFactory = { shape in
        try checkCPU()
        return BF16TrainingConvolution(shape)
    }

    /// The frozen backbone (eval-mode BatchNorm) as bf16 inference.
    public static func frozenBackbone(_ architecture: Architecture, _ state: StateDict) throws -> any InferenceEngine {
        try DNNLPlan(architecture: architecture, state: state, precision: .bf16)
    }
}

/// One convolution's forward, backward-data and backward-weights primitives in bf16 with fp32 accumulation,
/// built per input geometry. fp32 NHWC activations and patch-major (OHWI) weights are reordered into bf16 in the
/// layouts oneDNN chooses; outputs and gradients come back fp32 in the caller's layouts.
///
/// The batch is split across `Parallelism.threads` lanes, each with its own primitives and stream on one OpenMP
/// thread (as `DNNLPlan` does): OpenMP's barriers between the cores stall when the trainer's other threads share
/// them. Each lane's weight gradient covers its images; the lanes' gradients are summed.
final class BF16TrainingConvolution: TrainingConvolution {
    let shape: ConvShape
    private var plans: [Int: [Plan]] = [:]
    private var current: (plans: [Plan], ranges: [Range<Int>], g: Geometry)?
    private let laneThreads = LaneThreads()
    private var partialGradients: [Float] = []

    init(_ shape: ConvShape) { self.shape = shape }

    private func lanes(_ count: Int) -> [Range<Int>] {
        let laneCount = max(1, min(Parallelism.threads, count))
        return (0..<laneCount).map { count * $0 / laneCount ..< count * ($0 + 1) / laneCount }
    }

    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, weight: UnsafePointer<Float>, weightUnchanged: Bool,
                 _ y: UnsafeMutablePointer<Float>) {
        let key = (g.batch << 40) | (g.height << 20) | g.width
        let ranges = lanes(g.batch)
        if plans[key] == nil {
            if plans.count >= 4 { plans.removeAll() }
            // Shapes come from the trainer, the CPU was checked when the factory ran: a failure here is a defect.
            plans[key] = ranges.map { try! Plan(shape, Geometry(batch: $0.count, height: g.height, width: g.width)) }
        }
        let lanePlans = plans[key]!
        current = (lanePlans, ranges, g)
        let inFloats = g.height * g.width * shape.inChannels
        let out = g.output(of: shape), outFloats = out.height * out.width * shape.outChannels
        laneThreads.run(ranges.count) { lane in
            DNNLRuntime.setThreads(1)
            let first = ranges[lane].lowerBound
            try! lanePlans[lane].forward(x + first * inFloats, weight, reuseWeight: weightUnchanged, y + first * outFloats)
        }
    }

    func backward(_ dy: UnsafePointer<Float>, weightGradient: UnsafeMutablePointer<Float>?, inputGradient: UnsafeMutablePointer<Float>?) {
        guard let (lanePlans, ranges, g) = current else { preconditionFailure("backward before forward") }
        let inFloats = g.height * g.width * shape.inChannels
        let out = g.output(of: shape), outFloats = out.height * out.width * shape.outChannels
        let weightCount = shape.outChannels * shape.patchSize
        // Lane 0 writes the caller's gradient, the others their own slots, added afterwards.
        if weightGradient != nil && partialGradients.count < (ranges.count - 1) * weightCount {
            partialGradients = [Float](repeating: 0, count: (ranges.count - 1) * weightCount)
        }
        partialGradients.withUnsafeMutableBufferPointer { partial in
            let partial = partial
            laneThreads.run(ranges.count) { lane in
                DNNLRuntime.setThreads(1)
                let first = ranges[lane].lowerBound
                let dw = weightGradient.map { lane == 0 ? $0 : partial.baseAddress! + (lane - 1) * weightCount }
                try! lanePlans[lane].backward(dy + first * outFloats, dw, inputGradient.map { $0 + first * inFloats })
            }
            if let weightGradient {
                for lane in 1..<max(1, ranges.count) {
                    let p = partial.baseAddress! + (lane - 1) * weightCount
                    for i in 0..<weightCount { weightGradient[i] += p[i] }
                }
            }
        }
    }

    /// A conversion into `target` from `source`, or nothing when the layouts and types already agree.
    struct Conversion {
        var target: Memory
        var reorder: Primitive?
        let source: Memory

        init(from source: Memory, to desc: dnnl_memory_desc_t, attributes: Attributes) throws {
            self.source = source
            var a = source.desc, b = desc
            if dnnl_memory_desc_equal(&a, &b) != 0 {
                target = source
            } else {
                target = try Memory(desc)
                reorder = try Primitive(reorderFrom: source.desc, to: desc, attributes: attributes)
            }
        }

        func run(_ stream: Stream, _ scratchpad: Memory) throws {
            try reorder?.execute([(DNNL_ARG_FROM, source), (DNNL_ARG_TO, target), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
        }
    }

    final class Plan {
        let stream: Stream
        let forwardConv: Primitive, backwardData: Primitive, backwardWeights: Primitive
        // The caller's fp32 buffers (handles set per call): x, weight, y, dy, dx, dW.
        let userX: Memory, userW: Memory, userY: Memory, userDY: Memory, userDX: Memory, userDW: Memory
        // bf16 copies in oneDNN's layouts, and the fp32 results where oneDNN picks another layout.
        let x: Conversion, w: Conversion, xForWeights: Conversion, wForData: Conversion
        let dy: Conversion, dyForWeights: Conversion
        let y: Memory, yBack: Primitive?, dx: Memory, dxBack: Primitive?, dw: Memory, dwBack: Primitive?
        /// Every primitive's scratchpad, this lane's own: the library's is shared by all primitives, and lanes run
        /// theirs concurrently.
        let scratchpad: Memory

        init(_ s: ConvShape, _ g: Geometry) throws {
            stream = try Stream()
            let attributes = try Attributes(userScratchpad: true)
            let out = g.output(of: s)
            let srcDims = [g.batch, s.inChannels, g.height, g.width], dstDims = [g.batch, s.outChannels, out.height, out.width]
            let weightDims = [s.outChannels, s.inChannels, s.kernel, s.kernel]
            let strides = [dnnl_dim_t(s.stride), dnnl_dim_t(s.stride)]
            let (padBefore, padAfter) = Network.padding(s, (g.height, g.width))
            let what = "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels)"
            var srcAny = try memoryDesc(srcDims, dnnl_bf16, dnnl_format_tag_any)
            var weightsAny = try memoryDesc(weightDims, dnnl_bf16, dnnl_format_tag_any)
            var dstAny = try memoryDesc(dstDims, dnnl_bf16, dnnl_format_tag_any)
            // fp32 results (output, input gradient, weight gradient): oneDNN's bf16 kernels accumulate in fp32
            // and can write fp32, so nothing is rounded to bf16 on the way out.
            var dstF32 = try memoryDesc(dstDims, dnnl_f32, dnnl_format_tag_any)
            var diffSrcF32 = try memoryDesc(srcDims, dnnl_f32, dnnl_format_tag_any)
            var diffWeightsF32 = try memoryDesc(weightDims, dnnl_f32, dnnl_format_tag_any)

            var fd = dnnl_convolution_desc_t()
            try check(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &srcAny, &weightsAny,
                                                         nil, &dstF32, strides, padBefore, padAfter), "describing \(what)")
            forwardConv = try Primitive(&fd, attributes: attributes, what: "the bf16 \(what) convolution")
            var bd = dnnl_convolution_desc_t()
            try check(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &diffSrcF32, &weightsAny, &dstAny,
                                                               strides, padBefore, padAfter), "describing \(what)'s backward data")
            backwardData = try Primitive(&bd, attributes: attributes, hint: forwardConv, what: "the bf16 \(what) backward-data convolution")
            var wd = dnnl_convolution_desc_t()
            try check(dnnl_convolution_backward_weights_desc_init(&wd, dnnl_convolution_direct, &srcAny, &diffWeightsF32, nil, &dstAny,
                                                                  strides, padBefore, padAfter), "describing \(what)'s backward weights")
            backwardWeights = try Primitive(&wd, attributes: attributes, hint: forwardConv, what: "the bf16 \(what) backward-weights convolution")

            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            userX = try Memory(try memoryDesc(srcDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userDX = try Memory(try memoryDesc(srcDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userY = try Memory(try memoryDesc(dstDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userDY = try Memory(try memoryDesc(dstDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userW = try Memory(try memoryDesc(weightDims, dnnl_f32, dnnl_ohwi), buffer: dangling)
            userDW = try Memory(try memoryDesc(weightDims, dnnl_f32, dnnl_ohwi), buffer: dangling)

            x = try Conversion(from: userX, to: forwardConv.md(dnnl_query_src_md), attributes: attributes)
            w = try Conversion(from: userW, to: forwardConv.md(dnnl_query_weights_md), attributes: attributes)
            xForWeights = try Conversion(from: x.target, to: backwardWeights.md(dnnl_query_src_md), attributes: attributes)
            wForData = try Conversion(from: w.target, to: backwardData.md(dnnl_query_weights_md), attributes: attributes)
            dy = try Conversion(from: userDY, to: backwardData.md(dnnl_query_diff_dst_md), attributes: attributes)
            dyForWeights = try Conversion(from: dy.target, to: backwardWeights.md(dnnl_query_diff_dst_md), attributes: attributes)

            // Results: straight into the caller's buffer when oneDNN chose its layout, else through a reorder.
            func result(_ chosen: dnnl_memory_desc_t, _ user: Memory) throws -> (Memory, Primitive?) {
                var a = chosen, b = user.desc
                if dnnl_memory_desc_equal(&a, &b) != 0 { return (user, nil) }
                return (try Memory(chosen), try Primitive(reorderFrom: chosen, to: user.desc, attributes: attributes))
            }
            (y, yBack) = try result(forwardConv.md(dnnl_query_dst_md), userY)
            (dx, dxBack) = try result(backwardData.md(dnnl_query_diff_src_md), userDX)
            (dw, dwBack) = try result(backwardWeights.md(dnnl_query_diff_weights_md), userDW)
            let primitives = [forwardConv, backwardData, backwardWeights, yBack, dxBack, dwBack,
                              x.reorder, w.reorder, xForWeights.reorder, wForData.reorder, dy.reorder, dyForWeights.reorder]
            let bytes = primitives.compactMap { $0?.scratchpadSize }.max() ?? 0
            scratchpad = try Memory(try memoryDesc([max(1, bytes)], dnnl_u8, dnnl_x))
        }

        /// Whether `w` holds a conversion of the weight (then `reuseWeight` keeps it).
        private var hasWeight = false

        func forward(_ xp: UnsafePointer<Float>, _ wp: UnsafePointer<Float>, reuseWeight: Bool, _ yp: UnsafeMutablePointer<Float>) throws {
            userX.setData(UnsafeMutableRawPointer(mutating: xp))
            userW.setData(UnsafeMutableRawPointer(mutating: wp))
            userY.setData(UnsafeMutableRawPointer(yp))
            try x.run(stream, scratchpad)
            if !(reuseWeight && hasWeight) { try w.run(stream, scratchpad) }
            hasWeight = true
            try forwardConv.execute([(DNNL_ARG_SRC, x.target), (DNNL_ARG_WEIGHTS, w.target), (DNNL_ARG_DST, y), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try yBack?.execute([(DNNL_ARG_FROM, y), (DNNL_ARG_TO, userY), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
        }

        func backward(_ dyp: UnsafePointer<Float>, _ dwp: UnsafeMutablePointer<Float>?, _ dxp: UnsafeMutablePointer<Float>?) throws {
            userDY.setData(UnsafeMutableRawPointer(mutating: dyp))
            try dy.run(stream, scratchpad)
            if let dxp {
                userDX.setData(UnsafeMutableRawPointer(dxp))
                try wForData.run(stream, scratchpad)
                try backwardData.execute([(DNNL_ARG_DIFF_DST, dy.target), (DNNL_ARG_WEIGHTS, wForData.target),
                                          (DNNL_ARG_DIFF_SRC, dx), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
                try dxBack?.execute([(DNNL_ARG_FROM, dx), (DNNL_ARG_TO, userDX), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            if let dwp {
                userDW.setData(UnsafeMutableRawPointer(dwp))
                try xForWeights.run(stream, scratchpad)
                try dyForWeights.run(stream, scratchpad)
                try backwardWeights.execute([(DNNL_ARG_SRC, xForWeights.target), (DNNL_ARG_DIFF_DST, dyForWeights.target),
                                             (DNNL_ARG_DIFF_WEIGHTS, dw), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
                try dwBack?.execute([(DNNL_ARG_FROM, dw), (DNNL_ARG_TO, userDW), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            try stream.wait()
        }
    }
}
