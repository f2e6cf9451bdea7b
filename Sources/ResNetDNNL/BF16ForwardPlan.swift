import CDNNL
import ResNetModel

/// A bf16 training convolution's forward when no backward follows it (the head phase's frozen backbone with
/// train-mode BatchNorm, a forward with `training` false): each lane casts its images of x to bf16 NHWC and computes its
/// images of the caller's fp32 NHWC y, by oneDNN's inference convolution (brgconv) or, where it pays
/// (`WinogradBF16.paysInTraining`), as Winograd F(2x2, 3x3) with fp32 output. The training plan's blocked layouts
/// suit its backward passes, but cost a reorder of y back to NHWC at every layer (this forward: head phase +6 % /
/// +4 % at batch 16 / 64 on 49x49 crops; Winograd adds 12–15 % at 96x96). The bf16 weight (or Winograd's U) is made
/// once per weight change.
final class BF16ForwardPlan: BF16ForwardOnly {
    let lanes: [Lane]
    let ranges: [Range<Int>]
    let inFloats: Int, outFloats: Int
    /// What the lanes read: the weight in the convolution's layout, or Winograd's U, bf16.
    let weight: Memory
    let conversion: WeightConversion
    let scratchpads: [Memory]
    private var convertedGeneration = -1

    enum WeightConversion {
        /// From the caller's fp32 OHWI, each lane its share of the output channels.
        case reorder(BF16TrainingConvolution.SplitReorder)
        /// U = G g Gᵀ in fp32 (`WinogradBF16.transformedWeightLayout`), then one reorder into the matmul's layout.
        case winograd(ConvShape, source: Memory, reorder: Primitive)
    }

    final class Lane {
        enum Step {
            case convolution(Primitive)
            case winograd(WinogradBF16)
        }
        let stream: Stream
        let step: Step
        /// The caller's x and y (handles set per call), x in bf16.
        let userX: Memory, x: Memory, toX: Primitive, y: Memory

        /// `workspace`: Winograd's V and M, in the lane's scratch (`TrainingLanes.workspace`); `weights`: the layout
        /// the convolution reads its weight in, as another lane chose it (nil: oneDNN's choice).
        init(_ s: ConvShape, _ g: Geometry, winograd: Bool, workspace: FloatBuffer, weights: dnnl_memory_desc_t? = nil) throws {
            stream = try Stream()
            let passes = BF16TrainingConvolution.Passes(s, g, outChannels: s.outChannels,
                                                        what: "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels) (forward only)")
            let (srcDims, dstDims) = (passes.srcDims, passes.dstDims)
            let src = try memoryDesc(srcDims, dnnl_bf16, dnnl_nhwc), dst = try memoryDesc(dstDims, dnnl_f32, dnnl_nhwc)
            let attributes = try Attributes(userScratchpad: true)
            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            userX = try Memory(try memoryDesc(srcDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            x = try Memory(src)
            toX = try Primitive(reorderFrom: userX.desc, to: src, attributes: attributes)
            y = try Memory(dst, buffer: dangling)
            if winograd {
                // U is the plan's (`forwardOnly` points the placeholder at it).
                step = .winograd(try WinogradBF16(s, batch: g.batch, side: (g.height, g.width), src: x, dst: y, output: .f32,
                                                  workspace: workspace, weights: { try Memory($0, buffer: dangling) }))
                return
            }
            step = .convolution(try passes.forward(src: src, dst: dst, weights: weights, inference: true, attributes: attributes))
        }

        /// The layout this lane reads its weight (or U) in.
        var weightDesc: dnnl_memory_desc_t {
            switch step {
            case .convolution(let primitive): return primitive.md(dnnl_query_weights_md)
            case .winograd(let winograd): return winograd.matmul.md(dnnl_query_weights_md)
            }
        }

        var scratchpadSize: Int {
            switch step {
            case .convolution(let primitive): return max(primitive.scratchpadSize, toX.scratchpadSize)
            case .winograd(let winograd): return max(winograd.scratchpadSize, toX.scratchpadSize)
            }
        }

        func forward(_ xp: UnsafePointer<Float>, _ weight: Memory, _ yp: UnsafeMutablePointer<Float>, _ scratchpad: Memory) throws {
            userX.setData(UnsafeMutableRawPointer(mutating: xp))
            y.setData(UnsafeMutableRawPointer(yp))
            try toX.execute([(DNNL_ARG_FROM, userX), (DNNL_ARG_TO, x), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            switch step {
            case .convolution(let primitive):
                try primitive.execute([(DNNL_ARG_SRC, x), (DNNL_ARG_WEIGHTS, weight), (DNNL_ARG_DST, y),
                                       (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
                try stream.wait()
            case .winograd(let winograd):
                try stream.wait()
                winograd.weights.setData(weight.data)
                try winograd.run(stream, scratchpad)
            }
        }
    }

    /// `workSaving` as `DNNLPlan` takes it: Winograd wherever it applies (true), where it pays (nil), never (false).
    init(_ s: ConvShape, _ g: Geometry, workSaving: Bool?) throws {
        let ranges = DNNLPlan.laneRanges(g.batch)
        self.ranges = ranges
        inFloats = g.height * g.width * s.inChannels
        let out = g.output(of: s)
        outFloats = out.height * out.width * s.outChannels
        let smallestLane = Geometry(batch: ranges[0].count, height: g.height, width: g.width)
        let winograd = WinogradBF16.applies(s, (g.height, g.width))
            && (workSaving ?? (DNNLPlan.workSavingPays && WinogradBF16.paysInTraining(s, laneInput: smallestLane)))
        // The lanes share the weight: the lane with the most images picks its layout, the others read it so.
        func lane(_ index: Int, weights: dnnl_memory_desc_t?) throws -> Lane {
            try Lane(s, Geometry(batch: ranges[index].count, height: g.height, width: g.width), winograd: winograd,
                     workspace: TrainingLanes.workspace(index), weights: weights)
        }
        let leader = ranges.indices.max { ranges[$0].count < ranges[$1].count }!
        let first = try lane(leader, weights: nil)
        let layout = winograd ? nil : first.weightDesc
        lanes = try ranges.indices.map { $0 == leader ? first : try lane($0, weights: layout) }
        let chosen = lanes[0].weightDesc
        for lane in lanes.dropFirst() {
            var a = lane.weightDesc, b = chosen
            guard dnnl_memory_desc_equal(&a, &b) != 0 else {
                throw DNNLError("the lanes' bf16 convolutions chose different weight layouts")
            }
        }
        weight = try Memory(chosen)
        let attributes = try Attributes(userScratchpad: true)
        if winograd {
            let source = try WinogradBF16.transformedWeightLayout(s)
            conversion = .winograd(s, source: try Memory(source, buffer: UnsafeMutableRawPointer(bitPattern: 64)!),
                                   reorder: try Primitive(reorderFrom: source, to: chosen, attributes: attributes))
        } else {
            let weightDims = [s.outChannels, s.inChannels, s.kernel, s.kernel]
            let user = try memoryDesc(weightDims, dnnl_f32, dnnl_ohwi)
            conversion = .reorder(try BF16TrainingConvolution.SplitReorder(from: user, to: chosen, weightDims: weightDims, lanes: ranges.count,
                                                                           sourceBuffer: nil, targetBuffer: weight.data, attributes: attributes))
        }
        let shared: Int
        switch conversion {
        case .reorder(let split): shared = split.scratchpadSize
        case .winograd(_, _, let reorder): shared = reorder.scratchpadSize
        }
        scratchpads = try lanes.map { try Memory(try memoryDesc([max(1, $0.scratchpadSize, shared)], dnnl_u8, dnnl_x)) }
    }

    var forwardOnlyImplementation: String {
        switch lanes[0].step {
        case .convolution(let primitive): return primitive.implementation
        case .winograd(let winograd): return winograd.implementation
        }
    }

    var usesWinograd: Bool {
        if case .winograd = conversion { return true }
        return false
    }

    func forwardOnly(_ xp: UnsafePointer<Float>, _ weightp: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>) {
        if convertedGeneration != generation {
            switch conversion {
            case .reorder(let split):
                // Each lane converts its channels, and reads all of them: the conversion finishes before any forward.
                split.setSource(weightp)
                onTrainingLanes(lanes.count) { lane in
                    try split.run(lane: lane, lanes[lane].stream, scratchpads[lane])
                    try lanes[lane].stream.wait()
                }
            case .winograd(let s, let source, let reorder):
                let w = Array(UnsafeBufferPointer(start: weightp, count: s.outChannels * s.patchSize))
                var u = WinogradConv.transformedWeight(patchMajor: w, inChannels: s.inChannels, outChannels: s.outChannels)
                onTrainingLanes(1) { _ in
                    try u.withUnsafeMutableBytes { raw in
                        source.setData(raw.baseAddress!)
                        try reorder.execute([(DNNL_ARG_FROM, source), (DNNL_ARG_TO, weight), (DNNL_ARG_SCRATCHPAD, scratchpads[0])],
                                            on: lanes[0].stream)
                        try lanes[0].stream.wait()
                    }
                }
            }
            convertedGeneration = generation
        }
        onTrainingLanes(lanes.count) { lane in
            let first = ranges[lane].lowerBound
            try lanes[lane].forward(xp + first * inFloats, weight, yp + first * outFloats, scratchpads[lane])
        }
    }
}
