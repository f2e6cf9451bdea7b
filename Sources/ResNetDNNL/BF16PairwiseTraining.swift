import CDNNL
import CKernels
import ResNetModel

/// A bf16 training convolution on a map of at most 9 output pixels (layer4's 2x2 from 49x49 crops, 3x3 from 96x96)
/// as matmuls over its pairs (output pixel p, input pixel q) joined by a tap t of p's window, grouped by tap: for
/// tap t with pairs j = 1…k, X_t stacks the rows x[:, q_j, :] and DY_t the rows dy[:, p_j, C] (k·n rows each), and
///   forward        Y_t = X_t · W[C, t, :]ᵀ,     then y[:, p_j, C]   += Y_t's block j
///   backward data  D_t = DY_t · W[C, t, :],      then dx_l[:, q_j, :] += D_t's block j     dx = Σ_l dx_l
///   backward wts   dW[C, t, :] = DY_tᵀ · X_t
/// bf16 in, fp32 sums, where C is a lane's share of the output channels. One matmul per tap reads that tap's
/// weights once over k·n rows and writes its weight gradient once (a matmul per pair read the weights k times
/// over n rows, and read and wrote the gradient k times: whole-model bf16 training 8 % slower at batch 16, 49x49).
/// No multiply-add is spent on padding; the weight is
/// read in the caller's OHWI layout (converted to bf16 once per weight change, no blocked copies for forward
/// and backward-data) and the weight gradient is written straight into the caller's buffer. For a forward no
/// backward follows (a frozen prefix, a forward with `training` false: its weight changes rarely) each tap's
/// weight is packed into the layout forward's matmul chooses: on a strided view oneDNN packs it at every call in a
/// slower gemm (head phase +7 % at batch 16, 49x49), while packing at every training step costs more than it saves
/// (these transposing conversions run at a third of a plain one's rate).
/// Why: oneDNN 2.6.3's convolutions run such maps slowly (backward-weights at 52 GFLOPS of useful work, a third of
/// a matmul's rate; the blocked weight copies cost more than the passes at batch 16) and its bf16 backward-weights
/// reads outside a 2x1 input at stride 2, returning garbage gradients (`BF16TrainingTests` has both geometries).
/// Maps of more output pixels (`TapGroups.maximumOutputPixels`) stay on the convolutions.
final class BF16PairwisePlan: BF16Plan, BF16ForwardOnly {
    let tapGroups: TapGroups
    let lanes: [Lane]
    let imageRanges: [Range<Int>]
    let batch: Int, inChannels: Int, pixelsIn: Int
    /// The whole batch's input in bf16 [n, H·W·Cin], each image range converted by its lane.
    let x: Memory
    /// Each image range's part of the caller's x into `x`.
    let toX: [(reorder: Primitive, from: Memory, to: Memory)]
    /// x's rows stacked per pair in tap order, bf16 [pairs, n, Cin]: forward's X_t, backward-weights' too.
    let stackedX: Memory
    /// The weight generation the lanes' bf16 weights were converted at, plain and packed.
    private var convertedGeneration = -1, packedGeneration = -1

    /// Whether convolution `s` on input `g` runs by taps: a map of at most `TapGroups.maximumOutputPixels` output pixels.
    static func applies(_ s: ConvShape, _ g: Geometry) -> Bool {
        let out = g.output(of: s)
        return out.height * out.width <= TapGroups.maximumOutputPixels
    }

    /// nil where it does not apply (`applies`).
    init?(_ s: ConvShape, _ g: Geometry) throws {
        guard Self.applies(s, g) else { return nil }
        let tapGroups = TapGroups(s, (g.height, g.width)), stacked = tapGroups.pairs
        self.tapGroups = tapGroups
        (batch, inChannels, pixelsIn) = (g.batch, s.inChannels, g.height * g.width)
        let inputs = s.inputs((g.height, g.width))
        let laneCount = max(1, min(Parallelism.threads, s.outChannels))
        imageRanges = DNNLPlan.laneRanges(g.batch, lanes: laneCount)
        let x = try Memory(try memoryDesc([g.batch, inputs], dnnl_bf16, dnnl_ab))
        self.x = x
        stackedX = try Memory(try memoryDesc([stacked * g.batch, s.inChannels], dnnl_bf16, dnnl_ab))
        let attributes = try Attributes(userScratchpad: true)
        let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
        toX = try imageRanges.map { range in
            let from = try memoryDesc([range.count, inputs], dnnl_f32, dnnl_ab), to = try memoryDesc([range.count, inputs], dnnl_bf16, dnnl_ab)
            return (try Primitive(reorderFrom: from, to: to, attributes: attributes), try Memory(from, buffer: dangling),
                    try Memory(to, buffer: x.data + range.lowerBound * inputs * 2))
        }
        lanes = try (0..<laneCount).map { lane in
            try Lane(s, g, channels: s.outChannels * lane / laneCount ..< s.outChannels * (lane + 1) / laneCount,
                     tapGroups: tapGroups, stackedRows: stacked * g.batch)
        }
    }

    func forward(_ xp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>) {
        forward(xp, weight, generation: generation, yp, packed: false)
    }

    func forwardOnly(_ xp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>) {
        forward(xp, weight, generation: generation, yp, packed: true)
    }

    var implementation: String { "by taps, " + (lanes[0].forwardPasses.values.first?.matmul.implementation ?? "?") }
    var forwardOnlyImplementation: String {
        "by taps, packed weight, " + (lanes[0].packedForwardPasses.values.first?.matmul.implementation ?? "?")
    }

    /// `packed`: with the weight packed per tap (converted when stale) instead of the plain bf16 copy.
    private func forward(_ xp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>,
                         packed: Bool) {
        let stale = (packed ? packedGeneration : convertedGeneration) != generation
        // There are no more image ranges than lanes.
        onTrainingLanes(lanes.count) { lane in
            if stale { try packed ? lanes[lane].packWeight(weight) : lanes[lane].convertWeight(weight) }
            guard lane < toX.count else { return }
            let part = toX[lane]
            part.from.setData(UnsafeMutableRawPointer(mutating: xp + imageRanges[lane].lowerBound * pixelsIn * inChannels))
            try lanes[lane].run(part.reorder, [(DNNL_ARG_FROM, part.from), (DNNL_ARG_TO, part.to)])
            tapGroups.stack(x.data, pixelsPerImage: pixelsIn, rowBytes: inChannels * 2, images: imageRanges[lane], batch: batch,
                            into: stackedX.data, \.q)
        }
        if packed { packedGeneration = generation } else { convertedGeneration = generation }
        onTrainingLanes(lanes.count) { lane in try lanes[lane].forward(yp, packed: packed, self) }
    }

    func backward(_ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>?, _ dx: UnsafeMutablePointer<Float>?) {
        onTrainingLanes(lanes.count) { lane in try lanes[lane].backward(dy, dw, dx: dx != nil, self) }
        guard let dx else { return }
        // dx = Σ_l dx_l, each lane its images.
        let inputs = pixelsIn * inChannels
        onTrainingLanes(imageRanges.count) { lane in
            let range = imageRanges[lane]
            let start = range.lowerBound * inputs, count = range.count * inputs
            (dx + start).update(from: lanes[0].dx.data.assumingMemoryBound(to: Float.self) + start, count: count)
            for other in lanes.dropFirst() { resnetkit_add_rows_f32(other.dx.data.assumingMemoryBound(to: Float.self) + start, count, dx + start) }
        }
    }

    /// One lane's output channels: their bf16 weight and dy, its stack of dy, a tap's products before they are
    /// added to their pixels, its share of dx, and the three passes' matmuls for each group size.
    final class Lane {
        let channels: Range<Int>
        let stream: Stream
        let inChannels: Int, outChannels: Int, taps: Int, pixelsIn: Int, pixelsOut: Int, batch: Int
        /// This lane's channels of the weight, bf16 OHWI [C, k·k·Cin], converted from the caller's fp32.
        let weight: Memory, toWeight: Primitive, userWeight: Memory
        /// This lane's channels of dy, bf16 [n, P, C], converted from the caller's fp32 [n, P, Cout].
        let dy: Memory, toDY: Primitive, userDY: Memory
        /// dy's rows stacked per pair in tap order, bf16 [pairs, n, C].
        let stackedDY: Memory
        /// One tap's forward [k·n, C] or backward-data [k·n, Cin] products, fp32.
        let products: Memory
        /// This lane's share of dx, fp32 [n, H·W·Cin].
        let dx: Memory
        /// Per tap group, the tap's weight for this lane's channels packed in the layout of `packedForwardPasses`
        /// (W[C, t, :]ᵀ), each with its conversion from a view of the caller's fp32 OHWI.
        let packedWeights: [TapWeight]
        /// Per pass, the matmul for a tap of k pairs (key k) and the views it reads and writes (handles set per tap).
        let forwardPasses: [Int: Pass], dataPasses: [Int: Pass], weightsPasses: [Int: Pass]
        /// Forward with the weight in the layout the matmul chose.
        let packedForwardPasses: [Int: Pass]
        let scratchpad: Memory

        /// One tap's bf16 weight in a matmul's layout and the reorder filling it from the caller's fp32 weight
        /// (`source`'s handle set per conversion).
        struct TapWeight {
            let memory: Memory, source: Memory, reorder: Primitive
            /// The tap's first element in the caller's OHWI weight, in floats.
            let offset: Int

            func convert(_ weightp: UnsafePointer<Float>, _ stream: Stream, _ scratchpad: Memory) throws {
                source.setData(UnsafeMutableRawPointer(mutating: weightp + offset))
                try reorder.execute([(DNNL_ARG_FROM, source), (DNNL_ARG_TO, memory), (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
        }

        struct Pass {
            let matmul: Primitive
            let a: Memory, b: Memory, d: Memory

            func run(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ d: UnsafeMutableRawPointer, _ stream: Stream, _ scratchpad: Memory) throws {
                self.a.setData(UnsafeMutableRawPointer(mutating: a))
                self.b.setData(UnsafeMutableRawPointer(mutating: b))
                self.d.setData(d)
                try matmul.execute([(DNNL_ARG_SRC, self.a), (DNNL_ARG_WEIGHTS, self.b), (DNNL_ARG_DST, self.d),
                                    (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            }
        }

        init(_ s: ConvShape, _ g: Geometry, channels: Range<Int>, tapGroups: TapGroups, stackedRows: Int) throws {
            self.channels = channels
            stream = try Stream()
            let out = g.output(of: s)
            let n = g.batch, c = channels.count, i = s.inChannels
            (inChannels, outChannels, taps, batch) = (i, s.outChannels, s.kernel * s.kernel, n)
            (pixelsIn, pixelsOut) = (g.height * g.width, out.height * out.width)
            let what = "\(s.kernel)x\(s.kernel)/\(s.stride) \(i)→\(s.outChannels)'s channels \(channels) by taps"
            let attributes = try Attributes(userScratchpad: true)
            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!

            let weightDesc = try memoryDesc([c, taps * i], dnnl_bf16, dnnl_ab)
            weight = try Memory(weightDesc)
            userWeight = try Memory(try memoryDesc([c, taps * i], dnnl_f32, dnnl_ab), buffer: dangling)
            toWeight = try Primitive(reorderFrom: userWeight.desc, to: weightDesc, attributes: attributes)
            var whole = try memoryDesc([n, pixelsOut, s.outChannels], dnnl_f32, dnnl_abc), part = dnnl_memory_desc_t()
            try check(dnnl_memory_desc_init_submemory(&part, &whole, [n, pixelsOut, c].map { dnnl_dim_t($0) },
                                                      [0, 0, channels.lowerBound].map { dnnl_dim_t($0) }), "describing \(what)")
            userDY = try Memory(part, buffer: dangling)
            let dyDesc = try memoryDesc([n, pixelsOut, c], dnnl_bf16, dnnl_abc)
            dy = try Memory(dyDesc)
            toDY = try Primitive(reorderFrom: part, to: dyDesc, attributes: attributes)
            stackedDY = try Memory(try memoryDesc([stackedRows, c], dnnl_bf16, dnnl_ab))
            let widest = (tapGroups.sizes.max() ?? 1) * n
            products = try Memory(try memoryDesc([widest * max(c, i)], dnnl_f32, dnnl_x))
            dx = try Memory(try memoryDesc([n, pixelsIn * i], dnnl_f32, dnnl_ab))

            func view(_ dims: [Int], _ strides: [Int], _ type: dnnl_data_type_t) throws -> dnnl_memory_desc_t {
                var desc = dnnl_memory_desc_t()
                try check(dnnl_memory_desc_init_by_strides(&desc, 2, dims.map { dnnl_dim_t($0) }, type, strides.map { dnnl_dim_t($0) }),
                          "describing \(what)")
                return desc
            }
            /// `b` nil: the weight in the layout the matmul chooses.
            func pass(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t?, _ d: dnnl_memory_desc_t, _ name: String) throws -> Pass {
                var (aa, bb, dd) = (a, try b ?? memoryDesc([Int(a.dims.1), Int(d.dims.1)], dnnl_bf16, dnnl_format_tag_any), d)
                var desc = dnnl_matmul_desc_t()
                try check(dnnl_matmul_desc_init(&desc, &aa, &bb, nil, &dd), "describing \(what) (\(name))")
                let matmul = try Primitive(&desc, attributes: attributes, what: "the bf16 \(what) (\(name))")
                return Pass(matmul: matmul, a: try Memory(a, buffer: dangling),
                            b: try Memory(b ?? matmul.md(dnnl_query_weights_md), buffer: dangling), d: try Memory(d, buffer: dangling))
            }
            var forwardPasses: [Int: Pass] = [:], dataPasses: [Int: Pass] = [:], weightsPasses: [Int: Pass] = [:]
            var packedForwardPasses: [Int: Pass] = [:]
            for k in tapGroups.sizes {
                let rows = k * n
                // Y_t [k·n, C] = X_t [k·n, Cin] · W[C, t, :]ᵀ
                forwardPasses[k] = try pass(try view([rows, i], [i, 1], dnnl_bf16), try view([i, c], [1, taps * i], dnnl_bf16),
                                            try view([rows, c], [c, 1], dnnl_f32), "forward")
                packedForwardPasses[k] = try pass(try view([rows, i], [i, 1], dnnl_bf16), nil, try view([rows, c], [c, 1], dnnl_f32),
                                                  "forward, packed weight")
                // D_t [k·n, Cin] = DY_t [k·n, C] · W[C, t, :]
                dataPasses[k] = try pass(try view([rows, c], [c, 1], dnnl_bf16), try view([c, i], [taps * i, 1], dnnl_bf16),
                                         try view([rows, i], [i, 1], dnnl_f32), "backward data")
                // dW[C, t, :] = DY_tᵀ · X_t
                weightsPasses[k] = try pass(try view([c, rows], [1, c], dnnl_bf16), try view([rows, i], [i, 1], dnnl_bf16),
                                            try view([c, i], [taps * i, 1], dnnl_f32), "backward weights")
            }
            (self.forwardPasses, self.dataPasses, self.weightsPasses) = (forwardPasses, dataPasses, weightsPasses)
            self.packedForwardPasses = packedForwardPasses
            let taps = s.kernel * s.kernel
            packedWeights = try tapGroups.groups.map { group in
                let source = try view([i, c], [1, taps * i], dnnl_f32), target = packedForwardPasses[group.pixels.count]!.b.desc
                return TapWeight(memory: try Memory(target), source: try Memory(source, buffer: dangling),
                                 reorder: try Primitive(reorderFrom: source, to: target, attributes: attributes),
                                 offset: channels.lowerBound * taps * i + group.tap * i)
            }
            let passes = [forwardPasses, dataPasses, weightsPasses, packedForwardPasses].flatMap(\.values).map(\.matmul)
            let size = ([toWeight, toDY] + passes + packedWeights.map(\.reorder)).map(\.scratchpadSize).max() ?? 0
            scratchpad = try Memory(try memoryDesc([max(1, size)], dnnl_u8, dnnl_x))
        }

        func run(_ primitive: Primitive, _ args: [(Int32, Memory)]) throws {
            try primitive.execute(args + [(DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
        }

        /// These channels of the caller's fp32 OHWI weight, to bf16.
        func convertWeight(_ weightp: UnsafePointer<Float>) throws {
            userWeight.setData(UnsafeMutableRawPointer(mutating: weightp + channels.lowerBound * taps * inChannels))
            try run(toWeight, [(DNNL_ARG_FROM, userWeight), (DNNL_ARG_TO, weight)])
        }

        /// These channels of the caller's fp32 OHWI weight, to bf16 in packed forward's layouts.
        func packWeight(_ weightp: UnsafePointer<Float>) throws {
            for tap in packedWeights { try tap.convert(weightp, stream, scratchpad) }
            try stream.wait()
        }

        /// `packed`: with the weight in `packedWeights`.
        func forward(_ yp: UnsafeMutablePointer<Float>, packed: Bool, _ plan: BF16PairwisePlan) throws {
            let c = channels.count, lane = yp + channels.lowerBound
            for row in 0..<(batch * pixelsOut) { (lane + row * outChannels).update(repeating: 0, count: c) }
            for (index, group) in plan.tapGroups.groups.enumerated() {
                let (pass, weight) = packed ? (packedForwardPasses[group.pixels.count]!, packedWeights[index].memory.data)
                                            : (forwardPasses[group.pixels.count]!, self.weight.data + group.tap * inChannels * 2)
                try pass.run(plan.stackedX.data + group.first * batch * inChannels * 2, weight, products.data, stream, scratchpad)
                try stream.wait()
                plan.tapGroups.add(group, products: products.data.assumingMemoryBound(to: Float.self), length: c, batch: batch, into: lane,
                              pixelsPerImage: pixelsOut, stride: outChannels, \.p)
            }
        }

        func backward(_ dyp: UnsafePointer<Float>, _ dwp: UnsafeMutablePointer<Float>?, dx wantDX: Bool, _ plan: BF16PairwisePlan) throws {
            userDY.setData(UnsafeMutableRawPointer(mutating: dyp))
            try run(toDY, [(DNNL_ARG_FROM, userDY), (DNNL_ARG_TO, dy)])
            let c = channels.count
            plan.tapGroups.stack(dy.data, pixelsPerImage: pixelsOut, rowBytes: c * 2, images: 0..<batch, batch: batch, into: stackedDY.data, \.p)
            if let dwp {
                let lane = dwp + channels.lowerBound * taps * inChannels
                for t in plan.tapGroups.unusedTaps {
                    for channel in 0..<c { (lane + (channel * taps + t) * inChannels).update(repeating: 0, count: inChannels) }
                }
                for group in plan.tapGroups.groups {
                    try weightsPasses[group.pixels.count]!.run(stackedDY.data + group.first * batch * c * 2,
                                                              plan.stackedX.data + group.first * batch * inChannels * 2,
                                                              UnsafeMutableRawPointer(lane + group.tap * inChannels), stream, scratchpad)
                }
            }
            if wantDX {
                let target = dx.data.assumingMemoryBound(to: Float.self)
                target.update(repeating: 0, count: batch * pixelsIn * inChannels)
                for group in plan.tapGroups.groups {
                    try dataPasses[group.pixels.count]!.run(stackedDY.data + group.first * batch * c * 2,
                                                           weight.data + group.tap * inChannels * 2, products.data, stream, scratchpad)
                    try stream.wait()
                    plan.tapGroups.add(group, products: products.data.assumingMemoryBound(to: Float.self), length: inChannels, batch: batch,
                                  into: target, pixelsPerImage: pixelsIn, stride: inChannels, \.q)
                }
            }
            try stream.wait()
        }
    }
}
