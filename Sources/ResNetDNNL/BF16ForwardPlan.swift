import CDNNL
import ResNetModel

/// A bf16 training convolution's forward when no backward follows it (the head phase's frozen backbone with
/// train-mode BatchNorm, evaluation between epochs): each lane casts its images of x to bf16 NHWC and runs
/// oneDNN's inference convolution (brgconv) straight into its images of the caller's fp32 NHWC y. The training
/// plan's blocked layouts suit its backward passes, but cost a reorder of y back to NHWC at every layer: this
/// forward made the head phase 7–10 % faster (batch 16 and 64, 49x49, Zen 4). Winograd (as bf16 inference runs
/// layers 1–3) measured slower here: with fp32 outputs and 8 images a lane its transforms cost what it saves.
/// The bf16 weight is converted once per weight change, each lane its share of the output channels.
final class BF16ForwardPlan: BF16ForwardOnly {
    let lanes: [Lane]
    let ranges: [Range<Int>]
    let inFloats: Int, outFloats: Int
    /// The bf16 weight in the layout the convolutions chose.
    let weight: Memory
    let toWeight: BF16TrainingConvolution.SplitReorder
    let scratchpads: [Memory]
    private var convertedGeneration = -1

    final class Lane {
        let stream: Stream
        let convolution: Primitive
        /// The caller's x and y (handles set per call), x in bf16.
        let userX: Memory, x: Memory, toX: Primitive, y: Memory

        init(_ s: ConvShape, _ g: Geometry) throws {
            stream = try Stream()
            let out = g.output(of: s)
            let srcDims = [g.batch, s.inChannels, g.height, g.width], dstDims = [g.batch, s.outChannels, out.height, out.width]
            var src = try memoryDesc(srcDims, dnnl_bf16, dnnl_nhwc), dst = try memoryDesc(dstDims, dnnl_f32, dnnl_nhwc)
            var weights = try memoryDesc([s.outChannels, s.inChannels, s.kernel, s.kernel], dnnl_bf16, dnnl_format_tag_any)
            let (padBefore, padAfter) = Network.padding(s, (g.height, g.width))
            let strides = [dnnl_dim_t(s.stride), dnnl_dim_t(s.stride)]
            let what = "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels) (forward only)"
            var desc = dnnl_convolution_desc_t()
            try check(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct, &src, &weights, nil,
                                                         &dst, strides, padBefore, padAfter), "describing the bf16 \(what)")
            let attributes = try Attributes(userScratchpad: true)
            convolution = try Primitive(&desc, attributes: attributes, what: "the bf16 \(what) convolution")
            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            userX = try Memory(try memoryDesc(srcDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            x = try Memory(src)
            toX = try Primitive(reorderFrom: userX.desc, to: src, attributes: attributes)
            y = try Memory(dst, buffer: dangling)
        }

        func forward(_ xp: UnsafePointer<Float>, _ weight: Memory, _ yp: UnsafeMutablePointer<Float>, _ scratchpad: Memory) throws {
            userX.setData(UnsafeMutableRawPointer(mutating: xp))
            y.setData(UnsafeMutableRawPointer(yp))
            try toX.execute([(DNNL_ARG_FROM, userX), (DNNL_ARG_TO, x), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try convolution.execute([(DNNL_ARG_SRC, x), (DNNL_ARG_WEIGHTS, weight), (DNNL_ARG_DST, y),
                                     (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
        }
    }

    init(_ s: ConvShape, _ g: Geometry) throws {
        let laneCount = max(1, min(Parallelism.threads, g.batch))
        ranges = (0..<laneCount).map { g.batch * $0 / laneCount ..< g.batch * ($0 + 1) / laneCount }
        inFloats = g.height * g.width * s.inChannels
        let out = g.output(of: s)
        outFloats = out.height * out.width * s.outChannels
        lanes = try ranges.map { try Lane(s, Geometry(batch: $0.count, height: g.height, width: g.width)) }
        let chosen = lanes[0].convolution.md(dnnl_query_weights_md)
        for lane in lanes.dropFirst() {
            var a = lane.convolution.md(dnnl_query_weights_md), b = chosen
            guard dnnl_memory_desc_equal(&a, &b) != 0 else { throw DNNLError("the lanes' bf16 convolutions chose different weight layouts") }
        }
        weight = try Memory(chosen)
        let weightDims = [s.outChannels, s.inChannels, s.kernel, s.kernel]
        toWeight = try BF16TrainingConvolution.SplitReorder(from: try memoryDesc(weightDims, dnnl_f32, dnnl_ohwi), to: chosen,
                                                            weightDims: weightDims, lanes: laneCount, sourceBuffer: nil,
                                                            targetBuffer: weight.data, attributes: try Attributes(userScratchpad: true))
        let shared = toWeight.scratchpadSize
        scratchpads = try lanes.map { lane in
            try Memory(try memoryDesc([max(1, lane.convolution.scratchpadSize, lane.toX.scratchpadSize, shared)], dnnl_u8, dnnl_x))
        }
    }

    func forwardOnly(_ xp: UnsafePointer<Float>, _ weightp: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>) {
        if convertedGeneration != generation {
            // Each lane converts its channels, and reads all of them: the conversion finishes before any forward.
            toWeight.setSource(weightp)
            onTrainingLanes(lanes.count) { lane in
                try toWeight.run(lane: lane, lanes[lane].stream, scratchpads[lane])
                try lanes[lane].stream.wait()
            }
            convertedGeneration = generation
        }
        onTrainingLanes(lanes.count) { lane in
            let first = ranges[lane].lowerBound
            try lanes[lane].forward(xp + first * inFloats, weight, yp + first * outFloats, scratchpads[lane])
        }
    }
}
