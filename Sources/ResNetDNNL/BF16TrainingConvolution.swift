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

    public static let convolutions = convolutions(workSaving: nil)

    /// `workSaving` as `DNNLPlan` takes it, for the forwards no backward follows (`BF16ForwardPlan`): Winograd
    /// wherever it applies (true), where it pays (nil), never (false).
    public static func convolutions(workSaving: Bool?) -> TrainingConvolutionFactory {
        { shape in
            try checkCPU()
            return BF16TrainingConvolution(shape, workSaving: workSaving)
        }
    }

    /// The frozen backbone (eval-mode BatchNorm) as bf16 inference.
    public static func frozenBackbone(_ architecture: Architecture, _ state: StateDict) throws -> any InferenceEngine {
        try DNNLPlan(architecture: architecture, state: state, precision: .bf16)
    }

    /// The same with `workSaving` as `DNNLPlan` takes it.
    public static func frozenBackbone(workSaving: Bool?) -> (Architecture, StateDict) throws -> any InferenceEngine {
        { architecture, state in try DNNLPlan(architecture: architecture, state: state, precision: .bf16, workSaving: workSaving) }
    }

    /// Sets `model` up to train in bf16: its convolutions on oneDNN, built now for batches of `count` images of
    /// height x width (a failure is then an error before training, not a trap in it), and its frozen eval-mode
    /// backbone as bf16 inference; `workSaving` for both, as `DNNLPlan` takes it.
    public static func setUp(_ model: TrainableResNet, count: Int, height: Int, width: Int, workSaving: Bool?) throws {
        try model.setConvolutions(convolutions(workSaving: workSaving))
        try model.prepareConvolutions(count: count, height: height, width: width)
        model.frozenBackboneEngine = frozenBackbone(workSaving: workSaving)
    }
}

/// Runs `body(lane)` on `count` training lanes, each on one OpenMP thread (the count the primitives were created
/// for). Shapes and layouts are fixed when a plan is built: an execution failing here is a defect.
func onTrainingLanes(_ count: Int, _ body: (Int) throws -> Void) {
    TrainingLanes.run(count) { lane in
        DNNLRuntime.setThreads(1)
        try! body(lane)
    }
}

/// A bf16 convolution's passes for one input geometry: `weight` and the gradients fp32 OHWI, activations fp32 NHWC.
/// `generation` changes when the weight has.
protocol BF16Plan: AnyObject {
    func forward(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ y: UnsafeMutablePointer<Float>)
    func backward(_ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>?, _ dx: UnsafeMutablePointer<Float>?)
    /// The kernels oneDNN chose, for a debug log.
    var implementation: String { get }
}

/// A bf16 convolution's forward that no backward follows, for one input geometry (`BF16ForwardPlan`, or
/// `BF16PairwisePlan` with its weight packed).
protocol BF16ForwardOnly: AnyObject {
    func forwardOnly(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ y: UnsafeMutablePointer<Float>)
    var forwardOnlyImplementation: String { get }
}

/// One convolution's forward, backward-data and backward-weights primitives in bf16 with fp32 accumulation,
/// built per input geometry. fp32 NHWC activations and patch-major (OHWI) weights are reordered into bf16 in the
/// layouts oneDNN chooses; outputs and gradients come back fp32 in the caller's layouts. (Maps of at most 9 output
/// pixels skip the convolutions: `BF16PairwisePlan`.)
///
/// The batch is split across the training lanes (`TrainingLanes`, the threads the rest of the step runs on),
/// each lane with its own primitives and stream on one OpenMP thread (as `DNNLPlan` does): OpenMP's barriers
/// between the cores stall when the trainer's other threads share them.
///
/// What is derived from the weight is made once for all lanes, each lane converting its share of the output
/// channels: the bf16 copy in forward's layout when the weight has changed (after an optimizer step, not at every
/// forward), and from it the copy in backward-data's layout at the first backward after that. In the deep layers
/// (weight larger than the output) every pass is split by output channels instead, each lane over the whole
/// batch and reading only its channels of the weight: the lanes first convert their images of x into one bf16
/// input for the whole batch, then each computes its channels of y; backward, each converts its channels of dy to
/// bf16 once for both passes, computes its channels' weight gradient (reordered into the caller's OHWI gradient)
/// and its channels' share of dx, and the lanes' shares are summed into the caller's dx, each lane its images. No
/// lane writes a whole weight gradient and none is summed. Elsewhere, or where the channels or layouts do not
/// allow that, the batch is split by images, each lane's weight gradient kept in backward-weights' layout and the
/// lanes' summed while they are reordered into the caller's gradient.
final class BF16TrainingConvolution: TrainingConvolution {
    let shape: ConvShape
    private var plans: [Int: any BF16Plan] = [:]
    /// Per input geometry, the forward when no backward follows (maps by taps: the training plan's).
    private var forwardPlans: [Int: any BF16ForwardOnly] = [:]
    private var current: (any BF16Plan)?
    /// Counts weight changes (a `forward` whose weight is not unchanged); each plan's copies record the count
    /// they were converted at.
    private var weightGeneration = 0
    private var weightSource: UnsafePointer<Float>?

    /// For the forward-only plans' Winograd (`BF16ForwardPlan`).
    let workSaving: Bool?

    init(_ shape: ConvShape, workSaving: Bool? = nil) {
        self.shape = shape
        self.workSaving = workSaving
    }

    func prepare(_ g: Geometry) throws {
        _ = try plan(g)
        _ = try forwardPlan(g)
    }

    private static func key(_ g: Geometry) -> Int { (g.batch << 40) | (g.height << 20) | g.width }

    /// The forward-only plan for geometry `g`.
    func forwardPlan(_ g: Geometry) throws -> any BF16ForwardOnly {
        // Maps by taps share the training plan; elsewhere it is not built (evaluation's batch sizes need none).
        if BF16PairwisePlan.applies(shape, g), let pairwise = try plan(g) as? BF16PairwisePlan {
            return pairwise
        }
        let key = Self.key(g)
        if let plan = forwardPlans[key] { return plan }
        if forwardPlans.count >= 4 { forwardPlans.removeAll() }
        let plan = try DNNLRuntime.withThreads(1) { try BF16ForwardPlan(shape, g, workSaving: workSaving) }
        forwardPlans[key] = plan
        return plan
    }

    private func plan(_ g: Geometry) throws -> any BF16Plan {
        let key = Self.key(g)
        if let plan = plans[key] { return plan }
        if plans.count >= 4 { plans.removeAll() }
        // Each lane runs its primitives on one OpenMP thread, so they are created for one. Maps of at most 9 output
        // pixels by taps over their pixel pairs (`BF16PairwisePlan`).
        let plan: any BF16Plan = try DNNLRuntime.withThreads(1) { () throws -> any BF16Plan in
            if let pairwise = try BF16PairwisePlan(shape, g) { return pairwise }
            return try Plan(shape, g)
        }
        plans[key] = plan
        return plan
    }

    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, weight: UnsafePointer<Float>, weightUnchanged: Bool,
                 forBackward: Bool, _ y: UnsafeMutablePointer<Float>) {
        if !weightUnchanged || weight != weightSource {
            weightGeneration += 1
            weightSource = weight
        }
        // The trainer prepares its batch geometry before training (`prepare`): a failure here is a defect.
        if !forBackward {
            current = nil
            try! forwardPlan(g).forwardOnly(x, weight, generation: weightGeneration, y)
            return
        }
        let plan = try! self.plan(g)
        current = plan
        plan.forward(x, weight, generation: weightGeneration, y)
    }

    /// The kernels of the training passes and of the forward-only one, e.g. `training jit_bf16:avx512_core_bf16
    /// (backward: …); forward only winograd + brg:avx512_core_bf16`.
    func describe(_ g: Geometry) throws -> String {
        "training \(try plan(g).implementation); forward only \(try forwardPlan(g).forwardOnlyImplementation)"
    }

    func backward(_ dy: UnsafePointer<Float>, weightGradient: UnsafeMutablePointer<Float>?, inputGradient: UnsafeMutablePointer<Float>?) {
        guard let plan = current else { preconditionFailure("backward before forward") }
        plan.backward(dy, weightGradient, inputGradient)
    }

    /// One convolution's three bf16 passes for a batch geometry and `outChannels` of its output channels: the dims,
    /// strides and padding they share. Inputs and weights are bf16; the results (output, input gradient, weight
    /// gradient) fp32: oneDNN's bf16 kernels accumulate in fp32 and can write fp32, so nothing is rounded to bf16 on
    /// the way out. A layout not given is oneDNN's choice.
    struct Passes {
        let srcDims: [Int], dstDims: [Int], weightDims: [Int]
        let strides: [dnnl_dim_t], padBefore: [dnnl_dim_t], padAfter: [dnnl_dim_t]
        let what: String

        init(_ s: ConvShape, _ g: Geometry, outChannels: Int, what: String) {
            let out = g.output(of: s)
            srcDims = [g.batch, s.inChannels, g.height, g.width]
            dstDims = [g.batch, outChannels, out.height, out.width]
            weightDims = [outChannels, s.inChannels, s.kernel, s.kernel]
            strides = [dnnl_dim_t(s.stride), dnnl_dim_t(s.stride)]
            (padBefore, padAfter) = Network.padding(s, (g.height, g.width))
            self.what = what
        }

        private func any(_ dims: [Int], _ type: dnnl_data_type_t) throws -> dnnl_memory_desc_t {
            try memoryDesc(dims, type, dnnl_format_tag_any)
        }

        /// y (fp32, `dst` or oneDNN's layout) from x (bf16, `src` or oneDNN's layout) and W (bf16, `weights` or
        /// oneDNN's layout); `inference` when no backward follows (`BF16ForwardPlan`).
        func forward(src: dnnl_memory_desc_t? = nil, dst: dnnl_memory_desc_t? = nil, weights: dnnl_memory_desc_t? = nil,
                     inference: Bool = false, attributes: Attributes) throws -> Primitive {
            var (x, w, y) = (try src ?? any(srcDims, dnnl_bf16), try weights ?? any(weightDims, dnnl_bf16), try dst ?? any(dstDims, dnnl_f32))
            var desc = dnnl_convolution_desc_t()
            try check(dnnl_convolution_forward_desc_init(&desc, inference ? dnnl_forward_inference : dnnl_forward_training,
                                                         dnnl_convolution_direct, &x, &w, nil, &y, strides, padBefore, padAfter),
                      "describing \(what)")
            return try Primitive(&desc, attributes: attributes, what: "the bf16 \(what) convolution")
        }

        /// dx (fp32) from dy (bf16, `diffDst` or oneDNN's layout) and W (bf16, `weights` or oneDNN's layout).
        func backwardData(diffDst: dnnl_memory_desc_t? = nil, weights: dnnl_memory_desc_t? = nil, hint: Primitive,
                          attributes: Attributes) throws -> Primitive {
            var (dx, w, dy) = (try any(srcDims, dnnl_f32), try weights ?? any(weightDims, dnnl_bf16), try diffDst ?? any(dstDims, dnnl_bf16))
            var desc = dnnl_convolution_desc_t()
            try check(dnnl_convolution_backward_data_desc_init(&desc, dnnl_convolution_direct, &dx, &w, &dy, strides, padBefore, padAfter),
                      "describing \(what)'s backward data")
            return try Primitive(&desc, attributes: attributes, hint: hint, what: "the bf16 \(what) backward-data convolution")
        }

        /// dW (fp32) from x (bf16, `src` or oneDNN's layout) and dy (bf16).
        func backwardWeights(src: dnnl_memory_desc_t? = nil, hint: Primitive, attributes: Attributes) throws -> Primitive {
            var (x, dw, dy) = (try src ?? any(srcDims, dnnl_bf16), try any(weightDims, dnnl_f32), try any(dstDims, dnnl_bf16))
            var desc = dnnl_convolution_desc_t()
            try check(dnnl_convolution_backward_weights_desc_init(&desc, dnnl_convolution_direct, &x, &dw, nil, &dy,
                                                                  strides, padBefore, padAfter), "describing \(what)'s backward weights")
            return try Primitive(&desc, attributes: attributes, hint: hint, what: "the bf16 \(what) backward-weights convolution")
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

    /// A weight-shaped reorder split by output channels into one part per lane, each a reorder between the
    /// parts' sub-memories: source and target as views of whole buffers (the source's set per call). Offsets
    /// into a blocked layout have to fall on its blocks; when they cannot, lane 0 does it all in one part.
    struct SplitReorder {
        struct Part {
            let reorder: Primitive
            let from: Memory, to: Memory
        }
        let parts: [Part]

        /// `sourceBuffer`/`targetBuffer`: nil for a buffer whose handle is set per call by `setSource`/`setTarget`.
        init(from source: dnnl_memory_desc_t, to target: dnnl_memory_desc_t, weightDims: [Int], lanes: Int,
             sourceBuffer: UnsafeMutableRawPointer?, targetBuffer: UnsafeMutableRawPointer?, attributes: Attributes) throws {
            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            func parts(_ count: Int) throws -> [Part] {
                let outChannels = weightDims[0]
                // Cuts on multiples of 32 output channels (every blocked weight layout oneDNN picks here blocks
                // them by 16 or 32).
                let cuts = (0...count).map { outChannels * $0 / count / 32 * 32 }.map { min($0, outChannels) }
                var result: [Part] = []
                for p in 0..<count {
                    let first = p == 0 ? 0 : cuts[p], end = p == count - 1 ? outChannels : cuts[p + 1]
                    guard end > first else { throw DNNLError("empty part") }
                    let dims = ([end - first] + weightDims.dropFirst()).map { dnnl_dim_t($0) }
                    let offsets = ([first] + weightDims.dropFirst().map { _ in 0 }).map { dnnl_dim_t($0) }
                    var fromParent = source, toParent = target
                    var from = dnnl_memory_desc_t(), to = dnnl_memory_desc_t()
                    try check(dnnl_memory_desc_init_submemory(&from, &fromParent, dims, offsets), "a weight part")
                    try check(dnnl_memory_desc_init_submemory(&to, &toParent, dims, offsets), "a weight part")
                    result.append(Part(reorder: try Primitive(reorderFrom: from, to: to, attributes: attributes),
                                       from: try Memory(from, buffer: sourceBuffer ?? dangling),
                                       to: try Memory(to, buffer: targetBuffer ?? dangling)))
                }
                return result
            }
            if lanes > 1, let split = try? parts(lanes) {
                self.parts = split
            } else {
                self.parts = try parts(1)
            }
        }

        func setSource(_ pointer: UnsafeRawPointer) { parts.forEach { $0.from.setData(UnsafeMutableRawPointer(mutating: pointer)) } }
        func setTarget(_ pointer: UnsafeMutableRawPointer) { parts.forEach { $0.to.setData(pointer) } }

        /// Lane `lane`'s part, if it has one.
        func run(lane: Int, _ stream: Stream, _ scratchpad: Memory) throws {
            guard lane < parts.count else { return }
            let p = parts[lane]
            try p.reorder.execute([(DNNL_ARG_FROM, p.from), (DNNL_ARG_TO, p.to), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
        }

        var scratchpadSize: Int { parts.map(\.reorder.scratchpadSize).max() ?? 0 }
    }

    /// The lanes of one input geometry and the weight copies and gradients they share.
    final class Plan: BF16Plan {
        let lanes: [Lane]
        let ranges: [Range<Int>]
        let inFloats: Int, outFloats: Int
        /// The bf16 weight in forward's and in backward-data's layout (unless the backward is split by channels,
        /// each part with its own), converted by all lanes, and the weight generation each holds.
        let forwardWeight: Memory, dataWeight: Memory?
        let toForwardWeight: SplitReorder, toDataWeight: SplitReorder?
        private var forwardGeneration = -1, dataGeneration = -1
        private var generation = 0
        /// The lanes' weight gradients into the caller's: lane 0's copied, the others' added (when the backward
        /// is split by images).
        let gradientReduction: [SplitReorder]
        /// The passes split by output channels instead, over the whole batch, when they can be: each lane writes
        /// its channels of y (when the parts' forward weights can be views), its channels' weight gradient and its
        /// part of dx, and the parts of dx are summed (`partialSum`). The lanes convert their images of x into one
        /// bf16 input for the whole batch, which these read.
        let channelParts: [ChannelPart]?, partialSum: PartialSum?
        let scratchpads: [Memory]

        init(_ s: ConvShape, _ g: Geometry) throws {
            let ranges = DNNLPlan.laneRanges(g.batch)
            self.ranges = ranges
            // The lanes share the bf16 weights: the lane with the most images picks their layouts (oneDNN may pick
            // another for fewer images), the others read them so.
            func geometry(_ range: Range<Int>) -> Geometry { Geometry(batch: range.count, height: g.height, width: g.width) }
            let leader = ranges.indices.max { ranges[$0].count < ranges[$1].count }!
            let first = try Lane(s, geometry(ranges[leader]))
            let layouts = WeightLayouts(forward: first.forwardConv.md(dnnl_query_weights_md), data: first.backwardData.md(dnnl_query_weights_md))
            lanes = try ranges.indices.map { $0 == leader ? first : try Lane(s, geometry(ranges[$0]), weights: layouts) }
            inFloats = g.height * g.width * s.inChannels
            let out = g.output(of: s)
            outFloats = out.height * out.width * s.outChannels
            let weightDims = [s.outChannels, s.inChannels, s.kernel, s.kernel]
            let attributes = try Attributes(userScratchpad: true)
            let forwardDesc = lanes[0].forwardConv.md(dnnl_query_weights_md), dataDesc = lanes[0].backwardData.md(dnnl_query_weights_md)
            for lane in lanes {
                var a = lane.forwardConv.md(dnnl_query_weights_md), b = forwardDesc
                var c = lane.backwardData.md(dnnl_query_weights_md), d = dataDesc
                guard dnnl_memory_desc_equal(&a, &b) != 0, dnnl_memory_desc_equal(&c, &d) != 0 else {
                    throw DNNLError("the lanes' bf16 convolutions chose different weight layouts")
                }
            }
            forwardWeight = try Memory(forwardDesc)
            toForwardWeight = try SplitReorder(from: try memoryDesc(weightDims, dnnl_f32, dnnl_ohwi), to: forwardDesc,
                                               weightDims: weightDims, lanes: ranges.count, sourceBuffer: nil,
                                               targetBuffer: forwardWeight.data, attributes: attributes)
            let parts = try? ChannelPart.split(s, g, lanes: lanes, ranges: ranges, forwardWeight: forwardWeight)
            channelParts = parts
            partialSum = try parts.map { [ranges] in try PartialSum($0, s, g, ranges: ranges) }
            var a = forwardDesc, b = dataDesc
            if parts != nil {
                dataWeight = nil
                toDataWeight = nil
            } else if dnnl_memory_desc_equal(&a, &b) != 0 {
                dataWeight = forwardWeight
                toDataWeight = nil
            } else {
                let weight = try Memory(dataDesc)
                dataWeight = weight
                toDataWeight = try SplitReorder(from: forwardDesc, to: dataDesc, weightDims: weightDims, lanes: ranges.count,
                                                sourceBuffer: forwardWeight.data, targetBuffer: weight.data,
                                                attributes: attributes)
            }
            if parts == nil {
                let sum = try Attributes(sum: (1, dnnl_data_type_undef), userScratchpad: true)
                let userGradient = try memoryDesc(weightDims, dnnl_f32, dnnl_ohwi)
                let gradients = try lanes.map { lane in
                    let dw = try Memory(lane.backwardWeights.md(dnnl_query_diff_weights_md))
                    lane.dw = dw
                    return dw
                }
                func reductions(_ parts: Int) throws -> [SplitReorder] {
                    try gradients.enumerated().map { index, dw in
                        try SplitReorder(from: dw.desc, to: userGradient, weightDims: weightDims, lanes: parts,
                                         sourceBuffer: dw.data, targetBuffer: nil, attributes: index == 0 ? attributes : sum)
                    }
                }
                // Each lane adds into its own channels only if every lane's gradient splits alike.
                let split = try reductions(ranges.count)
                gradientReduction = Set(split.map(\.parts.count)).count == 1 ? split : try reductions(1)
            } else {
                gradientReduction = []
            }
            let shared = ([toForwardWeight, toDataWeight].compactMap { $0 } + gradientReduction).map(\.scratchpadSize).max() ?? 0
            let split = max(parts?.map(\.scratchpadSize).max() ?? 0, partialSum?.scratchpadSize ?? 0)
            scratchpads = try lanes.map { try Memory(try memoryDesc([max(1, $0.scratchpadSize, shared, split)], dnnl_u8, dnnl_x)) }
        }

        private func onLanes(_ body: (Int) throws -> Void) { onTrainingLanes(lanes.count, body) }

        var implementation: String {
            let lane = lanes[0]
            guard let part = channelParts?.first else {
                return "\(lane.forwardConv.implementation) (backward data \(lane.backwardData.implementation), weights "
                    + "\(lane.backwardWeights.implementation)) by images"
            }
            let forward = part.forward?.primitive.implementation ?? "\(lane.forwardConv.implementation) by images"
            return "\(forward) (backward data \(part.data.implementation), weights \(part.weights.implementation)) by output channels"
        }

        /// A weight-shaped conversion split across the lanes, each its part.
        private func convertOnLanes(_ reorder: SplitReorder) {
            onLanes { lane in
                try reorder.run(lane: lane, lanes[lane].stream, scratchpads[lane])
                try lanes[lane].stream.wait()
            }
        }

        func forward(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ y: UnsafeMutablePointer<Float>) {
            self.generation = generation
            if let channelParts, channelParts.allSatisfy({ $0.forward != nil }) {
                // Split by output channels: the lanes convert the weight (each its channels) and their images of x
                // into the whole batch's bf16 input, then each computes its channels of y from all of it.
                let stale = forwardGeneration != generation
                if stale { toForwardWeight.setSource(weight) }
                onLanes { lane in
                    if stale { try toForwardWeight.run(lane: lane, lanes[lane].stream, scratchpads[lane]) }
                    try lanes[lane].convertInput(x + ranges[lane].lowerBound * inFloats, scratchpads[lane])
                }
                forwardGeneration = generation
                onLanes { lane in try channelParts[lane].runForward(y, lanes[lane].stream, scratchpads[lane]) }
                return
            }
            if forwardGeneration != generation {
                toForwardWeight.setSource(weight)
                convertOnLanes(toForwardWeight)
                forwardGeneration = generation
            }
            onLanes { lane in
                let first = ranges[lane].lowerBound
                try lanes[lane].forward(x + first * inFloats, forwardWeight, y + first * outFloats, scratchpads[lane])
            }
        }

        func backward(_ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>?, _ dx: UnsafeMutablePointer<Float>?) {
            if let channelParts {
                let stale = dx != nil && dataGeneration != generation
                onLanes { lane in
                    try channelParts[lane].run(dy, dw, dx: dx != nil, dataWeightStale: stale, lanes[lane].stream, scratchpads[lane])
                }
                if stale { dataGeneration = generation }
                if let dx, let partialSum {
                    onLanes { lane in try partialSum.run(lane: lane, dx, lanes[lane].stream, scratchpads[lane]) }
                }
                return
            }
            guard let dataWeight else { preconditionFailure("no backward-data weight") }
            if dx != nil, let toDataWeight, dataGeneration != generation {
                convertOnLanes(toDataWeight)
                dataGeneration = generation
            }
            onLanes { lane in
                let first = ranges[lane].lowerBound
                try lanes[lane].backward(dy + first * outFloats, dataWeight, weightGradient: dw != nil,
                                         dx.map { $0 + first * inFloats }, scratchpads[lane])
            }
            if let dw {
                gradientReduction.forEach { $0.setTarget(UnsafeMutableRawPointer(dw)) }
                // Lane 0's gradient first (copied), then the others (added), each lane its share of the channels.
                onLanes { lane in
                    for reduction in gradientReduction { try reduction.run(lane: lane, lanes[lane].stream, scratchpads[lane]) }
                    try lanes[lane].stream.wait()
                }
            }
        }
    }

    /// One lane's share of a deep layer split by output channels, over the whole batch: its channels of y
    /// (when forward can read them as a view of the whole bf16 weight), reordered into the caller's NHWC output;
    /// its channels of dy converted to bf16 once and read by both backward passes; dW[first..<end] from the
    /// whole batch's bf16 input, reordered into the caller's OHWI gradient; and those channels' part of dx (every
    /// input channel, fp32 in `partialDX`), which `Plan` sums over the lanes. Each pass reads only these channels
    /// of the weight.
    final class ChannelPart {
        let weights: Primitive, data: Primitive
        /// Forward over these channels, with its weight a view of the whole bf16 weight in forward's layout and
        /// its output reordered into the caller's; nil where oneDNN wants another layout for the part's weight.
        let forward: (primitive: Primitive, weight: Memory, y: Memory, userY: Memory, yReorder: Primitive)?
        let x: Memory
        let userDY: Memory, dy: Memory, dyReorder: Primitive
        let dw: Memory, userDW: Memory, dwReorder: Primitive
        /// These channels of the weight in backward-data's layout, converted from forward's bf16 copy.
        let dataWeight: Memory, toDataWeight: Primitive, forwardWeight: Memory
        let partialDX: Memory
        let scratchpadSize: Int

        init(_ s: ConvShape, _ g: Geometry, channels: Range<Int>, input: Memory?, forwardWeight whole: Memory) throws {
            let attributes = try Attributes(userScratchpad: true)
            let out = g.output(of: s)
            let passes = Passes(s, g, outChannels: channels.count,
                                what: "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels)'s channels \(channels)")
            let (dstDims, weightDims) = (passes.dstDims, passes.weightDims)
            // The backward primitives need a forward one as a hint; this one only describes.
            let hint = try passes.forward(src: input?.desc, attributes: attributes)
            weights = try passes.backwardWeights(src: input?.desc, hint: hint, attributes: attributes)
            x = try input.map { try Memory($0.desc, buffer: $0.data) } ?? Memory(weights.md(dnnl_query_src_md))
            // Backward-data takes dy in the layout backward-weights chose, so that one conversion serves both.
            let dyDesc = weights.md(dnnl_query_diff_dst_md)
            data = try passes.backwardData(diffDst: dyDesc, hint: hint, attributes: attributes)

            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            func slice(_ parent: dnnl_memory_desc_t, _ dims: [Int], _ offsets: [Int]) throws -> dnnl_memory_desc_t {
                var p = parent, sub = dnnl_memory_desc_t()
                try check(dnnl_memory_desc_init_submemory(&sub, &p, dims.map { dnnl_dim_t($0) }, offsets.map { dnnl_dim_t($0) }),
                          "describing channels \(channels)")
                return sub
            }
            let userDYDesc = try slice(try memoryDesc([g.batch, s.outChannels, out.height, out.width], dnnl_f32, dnnl_nhwc),
                                       dstDims, [0, channels.lowerBound, 0, 0])
            userDY = try Memory(userDYDesc, buffer: dangling)
            dy = try Memory(dyDesc)
            dyReorder = try Primitive(reorderFrom: userDYDesc, to: dy.desc, attributes: attributes)
            let userDWDesc = try slice(try memoryDesc([s.outChannels, s.inChannels, s.kernel, s.kernel], dnnl_f32, dnnl_ohwi),
                                       weightDims, [channels.lowerBound, 0, 0, 0])
            userDW = try Memory(userDWDesc, buffer: dangling)
            dw = try Memory(weights.md(dnnl_query_diff_weights_md))
            dwReorder = try Primitive(reorderFrom: dw.desc, to: userDWDesc, attributes: attributes)
            let forwardPart = try slice(whole.desc, weightDims, [channels.lowerBound, 0, 0, 0])
            forwardWeight = try Memory(forwardPart, buffer: whole.data)
            dataWeight = try Memory(data.md(dnnl_query_weights_md))
            toDataWeight = try Primitive(reorderFrom: forwardPart, to: dataWeight.desc, attributes: attributes)
            partialDX = try Memory(data.md(dnnl_query_diff_src_md))

            // The part's forward weight is a view of the whole one when the part's layout is the whole's (the
            // output channels outermost), which the forward primitive has to have chosen.
            var view = forwardPart, chosen = hint.md(dnnl_query_weights_md)
            let offset = Int(view.offset0)
            view.offset0 = 0
            var hintSrc = hint.md(dnnl_query_src_md), xDesc = x.desc
            if dnnl_memory_desc_equal(&view, &chosen) != 0, dnnl_memory_desc_equal(&hintSrc, &xDesc) != 0 {
                let y = try Memory(hint.md(dnnl_query_dst_md))
                let userYDesc = try slice(try memoryDesc([g.batch, s.outChannels, out.height, out.width], dnnl_f32, dnnl_nhwc),
                                          dstDims, [0, channels.lowerBound, 0, 0])
                forward = (hint, try Memory(chosen, buffer: whole.data + offset * 2), y, try Memory(userYDesc, buffer: dangling),
                           try Primitive(reorderFrom: y.desc, to: userYDesc, attributes: attributes))
            } else {
                forward = nil
            }
            scratchpadSize = ([weights, data, dyReorder, dwReorder, toDataWeight] + [forward?.primitive, forward?.yReorder].compactMap { $0 })
                .map(\.scratchpadSize).max() ?? 0
        }

        /// These channels of y from the whole batch's bf16 input (converted by the lanes beforehand).
        func runForward(_ yp: UnsafeMutablePointer<Float>, _ stream: Stream, _ scratchpad: Memory) throws {
            guard let forward else { preconditionFailure("no channel-split forward") }
            forward.userY.setData(UnsafeMutableRawPointer(yp))
            try forward.primitive.execute([(DNNL_ARG_SRC, x), (DNNL_ARG_WEIGHTS, forward.weight), (DNNL_ARG_DST, forward.y),
                                           (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try forward.yReorder.execute([(DNNL_ARG_FROM, forward.y), (DNNL_ARG_TO, forward.userY), (DNNL_ARG_SCRATCHPAD, scratchpad)],
                                         on: stream)
            try stream.wait()
        }

        /// One part per lane, or nil (then the backward is split by images) for a layer whose outputs outweigh
        /// its weights, or when the channels do not split into blocks, the lanes' bf16 inputs cannot be views of
        /// one whole-batch input or the lanes' dx parts differ in layout. Points the lanes' input conversions at
        /// that input.
        static func split(_ s: ConvShape, _ g: Geometry, lanes: [Lane], ranges: [Range<Int>],
                          forwardWeight: Memory) throws -> [ChannelPart]? {
            // Split by channels, dx is computed in one part per lane and the parts summed (the input's size);
            // split by images, each lane writes a whole weight gradient and the lanes' are summed (the weight's
            // size, several times). The layers whose weights outweigh their outputs (the deep ones) split by
            // channels.
            guard lanes.count > 1, s.patchSize > g.output(of: s).pixels else { return nil }
            let cuts = (0...lanes.count).map { s.outChannels * $0 / lanes.count }
            guard cuts.allSatisfy({ $0 % 32 == 0 }) else { return nil }
            let first = try ChannelPart(s, g, channels: cuts[0]..<cuts[1], input: nil, forwardWeight: forwardWeight)
            let parts = try [first] + (1..<lanes.count).map {
                try ChannelPart(s, g, channels: cuts[$0]..<cuts[$0 + 1], input: first.x, forwardWeight: forwardWeight)
            }
            var dx0 = first.partialDX.desc
            for part in parts {
                var d = part.partialDX.desc
                guard dnnl_memory_desc_equal(&dx0, &d) != 0 else { return nil }
            }
            // A lane's input is a view of the whole batch's when its layout is the whole batch's with fewer images
            // and the images are outermost (so a lane's images are one contiguous range).
            let whole = first.x.desc
            guard whole.format_kind == dnnl_blocked else { return nil }
            let innerIndices = withUnsafeBytes(of: whole.format_desc.blocking.inner_idxs) { Array($0.bindMemory(to: dnnl_dim_t.self)) }
            guard !innerIndices.prefix(Int(whole.format_desc.blocking.inner_nblks)).contains(0) else { return nil }
            let imageStride = withUnsafeBytes(of: whole.format_desc.blocking.strides) { $0.bindMemory(to: dnnl_dim_t.self)[0] }
            for (lane, range) in zip(lanes, ranges) {
                var view = whole
                withUnsafeMutableBytes(of: &view.dims) { $0.bindMemory(to: dnnl_dim_t.self)[0] = dnnl_dim_t(range.count) }
                withUnsafeMutableBytes(of: &view.padded_dims) { $0.bindMemory(to: dnnl_dim_t.self)[0] = dnnl_dim_t(range.count) }
                var laneInput = lane.x.target.desc
                guard dnnl_memory_desc_equal(&view, &laneInput) != 0, lane.x.reorder != nil else { return nil }
            }
            for (lane, range) in zip(lanes, ranges) {
                lane.x.target.setData(first.x.data + range.lowerBound * Int(imageStride) * 2)
            }
            return parts
        }

        /// dy's channels to bf16, then dW's (when `dwp`) and dx's part (when `dx`). `dataWeightStale`: the
        /// forward weight changed since this part's backward-data copy was made.
        func run(_ dyp: UnsafePointer<Float>, _ dwp: UnsafeMutablePointer<Float>?, dx: Bool, dataWeightStale: Bool,
                 _ stream: Stream, _ scratchpad: Memory) throws {
            userDY.setData(UnsafeMutableRawPointer(mutating: dyp))
            try dyReorder.execute([(DNNL_ARG_FROM, userDY), (DNNL_ARG_TO, dy), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            if let dwp {
                userDW.setData(UnsafeMutableRawPointer(dwp))
                try weights.execute([(DNNL_ARG_SRC, x), (DNNL_ARG_DIFF_DST, dy), (DNNL_ARG_DIFF_WEIGHTS, dw),
                                     (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
                try dwReorder.execute([(DNNL_ARG_FROM, dw), (DNNL_ARG_TO, userDW), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            if dx {
                if dataWeightStale {
                    try toDataWeight.execute([(DNNL_ARG_FROM, forwardWeight), (DNNL_ARG_TO, dataWeight),
                                              (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
                }
                try data.execute([(DNNL_ARG_DIFF_DST, dy), (DNNL_ARG_WEIGHTS, dataWeight), (DNNL_ARG_DIFF_SRC, partialDX),
                                  (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            try stream.wait()
        }
    }

    /// dx as the sum of the channel parts' `partialDX`, into the caller's NHWC buffer: each lane its own images,
    /// the first part copied and the others added.
    struct PartialSum {
        struct Step {
            let reorder: Primitive
            let from: Memory, to: Memory
        }
        /// Per lane, its steps in order.
        let steps: [[Step]]

        init(_ parts: [ChannelPart], _ s: ConvShape, _ g: Geometry, ranges: [Range<Int>]) throws {
            let copy = try Attributes(userScratchpad: true)
            let add = try Attributes(sum: (1, dnnl_data_type_undef), userScratchpad: true)
            let dims = [g.batch, s.inChannels, g.height, g.width]
            let user = try memoryDesc(dims, dnnl_f32, dnnl_nhwc)
            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            func slice(_ parent: dnnl_memory_desc_t, _ range: Range<Int>) throws -> dnnl_memory_desc_t {
                var p = parent, sub = dnnl_memory_desc_t()
                let d = ([range.count] + dims.dropFirst()).map { dnnl_dim_t($0) }
                let o = ([range.lowerBound] + dims.dropFirst().map { _ in 0 }).map { dnnl_dim_t($0) }
                try check(dnnl_memory_desc_init_submemory(&sub, &p, d, o), "describing images \(range)")
                return sub
            }
            steps = try ranges.map { range in
                try parts.enumerated().map { index, part in
                    let from = try slice(part.partialDX.desc, range), to = try slice(user, range)
                    return Step(reorder: try Primitive(reorderFrom: from, to: to, attributes: index == 0 ? copy : add),
                                from: try Memory(from, buffer: part.partialDX.data), to: try Memory(to, buffer: dangling))
                }
            }
        }

        func run(lane: Int, _ dx: UnsafeMutablePointer<Float>, _ stream: Stream, _ scratchpad: Memory) throws {
            for step in steps[lane] {
                step.to.setData(UnsafeMutableRawPointer(dx))
                try step.reorder.execute([(DNNL_ARG_FROM, step.from), (DNNL_ARG_TO, step.to), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            try stream.wait()
        }

        var scratchpadSize: Int { steps.joined().map(\.reorder.scratchpadSize).max() ?? 0 }
    }

    /// The layouts a convolution's forward and backward-data read its bf16 weight in.
    struct WeightLayouts {
        let forward: dnnl_memory_desc_t, data: dnnl_memory_desc_t
    }

    /// One lane's primitives and its images' bf16 activations.
    final class Lane {
        let stream: Stream
        let forwardConv: Primitive, backwardData: Primitive, backwardWeights: Primitive
        // The caller's fp32 buffers (handles set per call): x, y, dy, dx.
        let userX: Memory, userY: Memory, userDY: Memory, userDX: Memory
        // bf16 copies in oneDNN's layouts, and the fp32 results where oneDNN picks another layout.
        let x: Conversion, xForWeights: Conversion
        let dy: Conversion, dyForWeights: Conversion
        let y: Memory, yBack: Primitive?, dx: Memory, dxBack: Primitive?
        /// This lane's weight gradient, fp32 in backward-weights' layout (when backward-weights is split by images).
        var dw: Memory?
        let scratchpadSize: Int

        /// `weights`: the layouts forward and backward-data read the weight in (the lanes share one copy of each),
        /// as another lane chose them; nil: oneDNN's choice.
        init(_ s: ConvShape, _ g: Geometry, weights: WeightLayouts? = nil) throws {
            stream = try Stream()
            let attributes = try Attributes(userScratchpad: true)
            let passes = Passes(s, g, outChannels: s.outChannels, what: "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels)")
            let (srcDims, dstDims) = (passes.srcDims, passes.dstDims)
            forwardConv = try passes.forward(weights: weights?.forward, attributes: attributes)
            backwardData = try passes.backwardData(weights: weights?.data, hint: forwardConv, attributes: attributes)
            backwardWeights = try passes.backwardWeights(hint: forwardConv, attributes: attributes)

            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            userX = try Memory(try memoryDesc(srcDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userDX = try Memory(try memoryDesc(srcDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userY = try Memory(try memoryDesc(dstDims, dnnl_f32, dnnl_nhwc), buffer: dangling)
            userDY = try Memory(try memoryDesc(dstDims, dnnl_f32, dnnl_nhwc), buffer: dangling)

            x = try Conversion(from: userX, to: forwardConv.md(dnnl_query_src_md), attributes: attributes)
            xForWeights = try Conversion(from: x.target, to: backwardWeights.md(dnnl_query_src_md), attributes: attributes)
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
            let primitives = [forwardConv, backwardData, backwardWeights, yBack, dxBack,
                              x.reorder, xForWeights.reorder, dy.reorder, dyForWeights.reorder]
            scratchpadSize = primitives.compactMap { $0?.scratchpadSize }.max() ?? 0
        }

        /// Only this lane's images of x into bf16 (for a forward split by channels).
        func convertInput(_ xp: UnsafePointer<Float>, _ scratchpad: Memory) throws {
            userX.setData(UnsafeMutableRawPointer(mutating: xp))
            try x.run(stream, scratchpad)
            try stream.wait()
        }

        func forward(_ xp: UnsafePointer<Float>, _ weight: Memory, _ yp: UnsafeMutablePointer<Float>, _ scratchpad: Memory) throws {
            userX.setData(UnsafeMutableRawPointer(mutating: xp))
            userY.setData(UnsafeMutableRawPointer(yp))
            try x.run(stream, scratchpad)
            try forwardConv.execute([(DNNL_ARG_SRC, x.target), (DNNL_ARG_WEIGHTS, weight), (DNNL_ARG_DST, y), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try yBack?.execute([(DNNL_ARG_FROM, y), (DNNL_ARG_TO, userY), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
        }

        /// dx (when non-nil) into the caller's buffer, the weight gradient (when asked) into `dw`.
        func backward(_ dyp: UnsafePointer<Float>, _ weight: Memory, weightGradient: Bool, _ dxp: UnsafeMutablePointer<Float>?,
                      _ scratchpad: Memory) throws {
            userDY.setData(UnsafeMutableRawPointer(mutating: dyp))
            try dy.run(stream, scratchpad)
            if let dxp {
                userDX.setData(UnsafeMutableRawPointer(dxp))
                try backwardData.execute([(DNNL_ARG_DIFF_DST, dy.target), (DNNL_ARG_WEIGHTS, weight),
                                          (DNNL_ARG_DIFF_SRC, dx), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
                try dxBack?.execute([(DNNL_ARG_FROM, dx), (DNNL_ARG_TO, userDX), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            if weightGradient, let dw {
                try xForWeights.run(stream, scratchpad)
                try dyForWeights.run(stream, scratchpad)
                try backwardWeights.execute([(DNNL_ARG_SRC, xForWeights.target), (DNNL_ARG_DIFF_DST, dyForWeights.target),
                                             (DNNL_ARG_DIFF_WEIGHTS, dw), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
            try stream.wait()
        }
    }
}
