import CDNNL
import ResNetModel

/// A bf16 training convolution with a single output pixel whose window covers the whole input (a 3x3/2 on 2x2,
/// 2x1 or 1x1, as layer4 meets on inputs of 32 to 64 pixels a side, or narrower) as a dense layer on an image's
/// NHWC vector: three matmuls over the taps that touch the image, exact by construction. Why not oneDNN's
/// convolution: its bf16 backward-weights kernel (2.6.3, `jit_bf16`) reads outside a 2x1 input at stride 2 and
/// returns garbage gradients (`BF16TrainingTests` has the case). Larger covered outputs (layer4's 2x2 from 49x49
/// crops) stay convolutions: there the dense weight is P times the kernel's, and expanding it and folding its
/// gradient at every step cost about what the matmuls save (measured: +7 % at batch 64, −4 % at batch 16).
///
/// With K = H·W·Cin and a lane's share of the output channels C (out of Cout), all in bf16 with fp32 results:
///   forward        y_l [n, P·C]  = x [n, K] · W_lᵀ           (W_l [P·C, K]: the dense rows of its channels)
///   backward data  dx_l [n, K]   = dy_l [n, P·C] · W_l         dx = Σ_l dx_l
///   backward wts   dW_l [P·C, K] = dy_lᵀ · x                   folded back onto the kernel taps
/// where P = Ho·Wo (here 1) and rows are (output pixel, channel). The lanes split the output channels, so each
/// reads and writes only its rows of the weight and its gradient; x is converted once for all (each lane its
/// images). Expanding W into W_l and folding dW_l back are strided reorders, one per output pixel: for a fixed
/// output pixel, its rows over (channel, input pixel, input channel) are a strided view of the OHWI weight.
final class BF16DensePlan: BF16Plan {
    let shape: ConvShape
    /// Floats of an image's input vector (K).
    let inputs: Int
    let lanes: [Lane]
    let imageRanges: [Range<Int>]
    /// The whole batch's input in bf16 [n, K], read by every lane's forward and backward-weights.
    let x: Memory
    /// Each lane's images of the caller's x into `x`.
    let toX: [(reorder: Primitive, from: Memory, to: Memory)]
    /// The weight generation W_l was expanded at.
    private var expandedGeneration = -1

    /// nil unless the output is one pixel whose window covers the input.
    init?(_ s: ConvShape, _ g: Geometry) throws {
        let side = (g.height, g.width)
        guard s.outputSide(g.height) * s.outputSide(g.width) == 1, DNNLPlan.windowsCoverInput(s, side) else { return nil }
        shape = s
        let inputs = s.inputs(side)
        self.inputs = inputs
        let laneCount = max(1, min(Parallelism.threads, s.outChannels))
        let channelRanges = (0..<laneCount).map { s.outChannels * $0 / laneCount ..< s.outChannels * ($0 + 1) / laneCount }
        let imageLanes = max(1, min(laneCount, g.batch))
        let imageRanges = (0..<imageLanes).map { g.batch * $0 / imageLanes ..< g.batch * ($0 + 1) / imageLanes }
        self.imageRanges = imageRanges
        let x = try Memory(try memoryDesc([g.batch, inputs], dnnl_bf16, dnnl_ab))
        self.x = x
        let attributes = try Attributes(userScratchpad: true)
        let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
        toX = try imageRanges.map { range in
            let from = try memoryDesc([range.count, inputs], dnnl_f32, dnnl_ab), to = try memoryDesc([range.count, inputs], dnnl_bf16, dnnl_ab)
            return (try Primitive(reorderFrom: from, to: to, attributes: attributes), try Memory(from, buffer: dangling),
                    try Memory(to, buffer: x.data + range.lowerBound * inputs * 2))
        }
        let outSide = (s.outputSide(g.height), s.outputSide(g.width))
        lanes = try channelRanges.map { try Lane(s, batch: g.batch, side: side, outSide: outSide, channels: $0, x: x) }
    }

    /// Runs `body(lane)` on every lane, each on one OpenMP thread.
    private func onLanes(_ count: Int, _ body: (Int) throws -> Void) {
        TrainingLanes.run(count) { lane in
            DNNLRuntime.setThreads(1)
            // Shapes and layouts were fixed when the plan was built; an execution failing here is a defect.
            try! body(lane)
        }
    }

    func forward(_ xp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>) {
        let stale = expandedGeneration != generation
        // There are no more image parts than lanes (`imageRanges`).
        onLanes(lanes.count) { lane in
            if stale { try lanes[lane].expand(weight) }
            if lane < toX.count {
                let part = toX[lane]
                part.from.setData(UnsafeMutableRawPointer(mutating: xp + imageRanges[lane].lowerBound * inputs))
                try lanes[lane].run(part.reorder, [(DNNL_ARG_FROM, part.from), (DNNL_ARG_TO, part.to)])
            }
        }
        expandedGeneration = generation
        onLanes(lanes.count) { lane in try lanes[lane].forward(yp) }
    }

    func backward(_ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>?, _ dx: UnsafeMutablePointer<Float>?) {
        onLanes(lanes.count) { lane in try lanes[lane].backward(dy, dw, dx: dx != nil, shape) }
        guard let dx else { return }
        // dx = Σ_l dx_l, each lane its images.
        onLanes(imageRanges.count) { lane in
            let range = imageRanges[lane]
            let start = range.lowerBound * inputs, count = range.count * inputs
            let first = lanes[0].dx.data.assumingMemoryBound(to: Float.self)
            (dx + start).update(from: first + start, count: count)
            for other in lanes.dropFirst() {
                let part = other.dx.data.assumingMemoryBound(to: Float.self) + start
                for i in 0..<count { dx[start + i] += part[i] }
            }
        }
    }

    /// One lane's output channels: their dense rows of the weight (bf16), matmuls and buffers.
    final class Lane {
        let channels: Range<Int>
        let stream: Stream
        /// W_l [P·C, K] bf16, rows (output pixel, channel), and the same buffer read as [K, P·C] (plain layouts: the
        /// weight changes at every step, and packing it would cost more than the matmuls save).
        let weight: Memory, weightTransposed: Memory
        /// Per output pixel: the OHWI weight's view into W_l's rows (fp32 → bf16), and dW_l's rows added into the
        /// OHWI gradient's view (the caller's buffers set per call through `offset`, in floats).
        let expansion: [Strided], folding: [Strided]
        struct Strided { let reorder: Primitive; let user: Memory, lane: Memory; let offset: Int }
        let forwardMatmul: Primitive, dataMatmul: Primitive, weightsMatmul: Primitive
        /// y_l [n, P·C] fp32, dy_l [n, P·C] bf16 (and read as [P·C, n]), dx_l [n, K] fp32, dW_l [P·C, K] fp32.
        let y: Memory, dyBF16: Memory, dyTransposed: Memory, dx: Memory, dw: Memory
        /// The caller's y and dy ([n, P, Cout] NHWC) at these channels, and the reorders to and from them (from y_l
        /// and into dy_l, read as [n, P, C]).
        let userY: Memory, userDY: Memory, laneY: Memory, laneDY: Memory
        let toUserY: Primitive, fromUserDY: Primitive
        let x: Memory
        let scratchpad: Memory

        init(_ s: ConvShape, batch n: Int, side: (Int, Int), outSide: (Int, Int), channels: Range<Int>, x: Memory) throws {
            let k = s.inputs(side), p = outSide.0 * outSide.1
            self.channels = channels
            self.x = x
            stream = try Stream()
            let rows = p * channels.count
            let attributes = try Attributes(userScratchpad: true)
            weight = try Memory(try memoryDesc([rows, k], dnnl_bf16, dnnl_ab))
            weightTransposed = try Memory(try memoryDesc([k, rows], dnnl_bf16, dnnl_ba), buffer: weight.data)
            let what = "\(s.kernel)x\(s.kernel)/\(s.stride) \(s.inChannels)→\(s.outChannels)'s channels \(channels) as a dense layer"
            func matmul(_ src: dnnl_memory_desc_t, _ weights: dnnl_memory_desc_t, _ dst: dnnl_memory_desc_t, _ pass: String) throws -> Primitive {
                var (a, b, c) = (src, weights, dst)
                var desc = dnnl_matmul_desc_t()
                try check(dnnl_matmul_desc_init(&desc, &a, &b, nil, &c), "describing \(what) (\(pass))")
                return try Primitive(&desc, attributes: attributes, what: "the bf16 \(what) (\(pass))")
            }
            y = try Memory(try memoryDesc([n, rows], dnnl_f32, dnnl_ab))
            dyBF16 = try Memory(try memoryDesc([n, rows], dnnl_bf16, dnnl_ab))
            dyTransposed = try Memory(try memoryDesc([rows, n], dnnl_bf16, dnnl_ba), buffer: dyBF16.data)
            dx = try Memory(try memoryDesc([n, k], dnnl_f32, dnnl_ab))
            dw = try Memory(try memoryDesc([rows, k], dnnl_f32, dnnl_ab))
            // y_l = x · W_lᵀ (W_l read as [K, P·C]) and dx_l = dy_l · W_l.
            forwardMatmul = try matmul(x.desc, weightTransposed.desc, try memoryDesc([n, rows], dnnl_f32, dnnl_ab), "forward")
            dataMatmul = try matmul(try memoryDesc([n, rows], dnnl_bf16, dnnl_ab), weight.desc, try memoryDesc([n, k], dnnl_f32, dnnl_ab),
                                    "backward data")
            // dW_l = dy_lᵀ · x: dy_l read transposed.
            weightsMatmul = try matmul(dyTransposed.desc, x.desc, try memoryDesc([rows, k], dnnl_f32, dnnl_ab), "backward weights")
            // The caller's [n, P, Cout] at these channels, and this lane's [n, P, C].
            func sliced(_ type: dnnl_data_type_t) throws -> dnnl_memory_desc_t {
                var whole = try memoryDesc([n, p, s.outChannels], type, dnnl_abc), part = dnnl_memory_desc_t()
                try check(dnnl_memory_desc_init_submemory(&part, &whole, [n, p, channels.count].map { dnnl_dim_t($0) },
                                                          [0, 0, channels.lowerBound].map { dnnl_dim_t($0) }), "describing \(what)")
                return part
            }
            let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
            let userYDesc = try sliced(dnnl_f32)
            userY = try Memory(userYDesc, buffer: dangling)
            userDY = try Memory(userYDesc, buffer: dangling)
            laneY = try Memory(try memoryDesc([n, p, channels.count], dnnl_f32, dnnl_abc), buffer: y.data)
            laneDY = try Memory(try memoryDesc([n, p, channels.count], dnnl_bf16, dnnl_abc), buffer: dyBF16.data)
            toUserY = try Primitive(reorderFrom: laneY.desc, to: userYDesc, attributes: attributes)
            fromUserDY = try Primitive(reorderFrom: userYDesc, to: laneDY.desc, attributes: attributes)
            // Output pixel (oy, ox)'s rows: W[o, iy − oy·stride + top, ix − ox·stride + left, i] over (c, iy, ix, i).
            let kk = s.kernel, i = s.inChannels, (top, left) = (s.pads(side.0).before, s.pads(side.1).before)
            let viewDims = [channels.count, side.0, side.1, i].map { dnnl_dim_t($0) }
            func view(_ type: dnnl_data_type_t) throws -> dnnl_memory_desc_t {
                var desc = dnnl_memory_desc_t()
                let strides = [kk * kk * i, kk * i, i, 1].map { dnnl_dim_t($0) }
                try check(dnnl_memory_desc_init_by_strides(&desc, 4, viewDims, type, strides), "describing \(what)'s taps")
                return desc
            }
            let userView = try view(dnnl_f32)
            let laneBlock = try memoryDesc(viewDims.map { Int($0) }, dnnl_bf16, dnnl_abcd)
            let laneBlockF32 = try memoryDesc(viewDims.map { Int($0) }, dnnl_f32, dnnl_abcd)
            let addInto = try Attributes(sum: (1, dnnl_data_type_undef), userScratchpad: true)
            var expansion: [Strided] = [], folding: [Strided] = []
            for oy in 0..<outSide.0 {
                for ox in 0..<outSide.1 {
                    let pixel = oy * outSide.1 + ox
                    let offset = ((channels.lowerBound * kk + top - oy * s.stride) * kk + left - ox * s.stride) * i
                    let block = pixel * channels.count * k
                    expansion.append(Strided(reorder: try Primitive(reorderFrom: userView, to: laneBlock, attributes: attributes),
                                             user: try Memory(userView, buffer: dangling),
                                             lane: try Memory(laneBlock, buffer: weight.data + block * 2), offset: offset))
                    folding.append(Strided(reorder: try Primitive(reorderFrom: laneBlockF32, to: userView, attributes: addInto),
                                           user: try Memory(userView, buffer: dangling),
                                           lane: try Memory(laneBlockF32, buffer: dw.data + block * 4), offset: offset))
                }
            }
            self.expansion = expansion
            self.folding = folding
            let size = ([forwardMatmul, dataMatmul, weightsMatmul, toUserY, fromUserDY]
                        + expansion.map(\.reorder) + folding.map(\.reorder)).map(\.scratchpadSize).max() ?? 0
            scratchpad = try Memory(try memoryDesc([max(1, size)], dnnl_u8, dnnl_x))
        }

        func run(_ primitive: Primitive, _ args: [(Int32, Memory)]) throws {
            try primitive.execute(args + [(DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
        }

        /// W_l from the fp32 OHWI master weight.
        func expand(_ weightp: UnsafePointer<Float>) throws {
            for part in expansion {
                part.user.setData(UnsafeMutableRawPointer(mutating: weightp + part.offset))
                try run(part.reorder, [(DNNL_ARG_FROM, part.user), (DNNL_ARG_TO, part.lane)])
            }
        }

        func forward(_ yp: UnsafeMutablePointer<Float>) throws {
            try run(forwardMatmul, [(DNNL_ARG_SRC, x), (DNNL_ARG_WEIGHTS, weightTransposed), (DNNL_ARG_DST, y)])
            userY.setData(UnsafeMutableRawPointer(yp))
            try run(toUserY, [(DNNL_ARG_FROM, laneY), (DNNL_ARG_TO, userY)])
        }

        func backward(_ dyp: UnsafePointer<Float>, _ dwp: UnsafeMutablePointer<Float>?, dx wantDX: Bool, _ s: ConvShape) throws {
            userDY.setData(UnsafeMutableRawPointer(mutating: dyp))
            try run(fromUserDY, [(DNNL_ARG_FROM, userDY), (DNNL_ARG_TO, laneDY)])
            if let dwp {
                try run(weightsMatmul, [(DNNL_ARG_SRC, dyTransposed), (DNNL_ARG_WEIGHTS, x), (DNNL_ARG_DST, dw)])
                try fold(into: dwp, s)
            }
            if wantDX {
                try run(dataMatmul, [(DNNL_ARG_SRC, dyBF16), (DNNL_ARG_WEIGHTS, weight), (DNNL_ARG_DST, dx)])
            }
        }

        /// These channels of the OHWI weight gradient: zeroed, then each output pixel's rows of dW_l added onto
        /// the taps they were read through.
        func fold(into dwp: UnsafeMutablePointer<Float>, _ s: ConvShape) throws {
            let perChannel = s.kernel * s.kernel * s.inChannels
            (dwp + channels.lowerBound * perChannel).update(repeating: 0, count: channels.count * perChannel)
            for part in folding {
                part.user.setData(UnsafeMutableRawPointer(dwp + part.offset))
                try run(part.reorder, [(DNNL_ARG_FROM, part.lane), (DNNL_ARG_TO, part.user)])
            }
        }
    }
}
