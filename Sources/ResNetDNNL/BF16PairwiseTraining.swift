import CDNNL
import ResNetModel

/// A bf16 training convolution on a map of at most 4 output pixels (layer4's 2x2 from 49x49 crops, 1x1 from 32x32)
/// with every pass as matmuls, one per (output pixel p, tap t) pair whose tap lands on an input pixel q:
///   forward        y[:, p, C]   += x[:, q, :] · W[C, t, :]ᵀ
///   backward data  dx_l[:, q, :] += dy[:, p, C] · W[C, t, :]        dx = Σ_l dx_l
///   backward wts   dW[C, t, :]  += dy[:, p, C]ᵀ · x[:, q, :]
/// over the batch, bf16 in, fp32 sums, where C is a lane's share of the output channels. The weight is read in the
/// caller's OHWI layout (converted to bf16 once per weight change, no blocked copies for forward and backward-data),
/// outputs and gradients are written straight into the caller's buffers, and no multiply-add is spent on padding.
/// Why: oneDNN 2.6.3's convolutions run such maps slowly (backward-weights at 52 GFLOPS of useful work, a third of
/// a matmul's rate; the blocked weight copies cost more than the passes at batch 16) and its bf16 backward-weights
/// reads outside a 2x1 input at stride 2, returning garbage gradients (`BF16TrainingTests` has both geometries).
/// With more output pixels the pairs multiply and the convolutions win.
final class BF16PairwisePlan: BF16Plan {
    /// Output pixel, input pixel and tap (ky·k + kx) of every pair whose tap lands inside the input.
    let pairs: [(p: Int, q: Int, t: Int)]
    let lanes: [Lane]
    let imageRanges: [Range<Int>]
    /// Floats of an image's input vector (H·W·Cin).
    let inputs: Int
    /// The whole batch's input in bf16 [n, H·W·Cin], read by every lane's forward and backward-weights.
    let x: Memory
    /// Each image range's part of the caller's x into `x`.
    let toX: [(reorder: Primitive, from: Memory, to: Memory)]
    /// The weight generation the lanes' bf16 weights were converted at.
    private var convertedGeneration = -1

    /// nil for a map of more than 4 output pixels.
    init?(_ s: ConvShape, _ g: Geometry) throws {
        let out = g.output(of: s)
        guard out.height * out.width <= 4 else { return nil }
        pairs = s.taps((g.height, g.width))
        let inputs = s.inputs((g.height, g.width))
        self.inputs = inputs
        let laneCount = max(1, min(Parallelism.threads, s.outChannels))
        let imageLanes = max(1, min(laneCount, g.batch))
        imageRanges = (0..<imageLanes).map { g.batch * $0 / imageLanes ..< g.batch * ($0 + 1) / imageLanes }
        let x = try Memory(try memoryDesc([g.batch, inputs], dnnl_bf16, dnnl_ab))
        self.x = x
        let attributes = try Attributes(userScratchpad: true)
        let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
        toX = try imageRanges.map { range in
            let from = try memoryDesc([range.count, inputs], dnnl_f32, dnnl_ab), to = try memoryDesc([range.count, inputs], dnnl_bf16, dnnl_ab)
            return (try Primitive(reorderFrom: from, to: to, attributes: attributes), try Memory(from, buffer: dangling),
                    try Memory(to, buffer: x.data + range.lowerBound * inputs * 2))
        }
        lanes = try (0..<laneCount).map { lane in
            try Lane(s, g, channels: s.outChannels * lane / laneCount ..< s.outChannels * (lane + 1) / laneCount, x: x)
        }
    }

    func forward(_ xp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, generation: Int, _ yp: UnsafeMutablePointer<Float>) {
        let stale = convertedGeneration != generation
        // There are no more image ranges than lanes.
        onTrainingLanes(lanes.count) { lane in
            if stale { try lanes[lane].convertWeight(weight) }
            guard lane < toX.count else { return }
            let part = toX[lane]
            part.from.setData(UnsafeMutableRawPointer(mutating: xp + imageRanges[lane].lowerBound * inputs))
            try lanes[lane].run(part.reorder, [(DNNL_ARG_FROM, part.from), (DNNL_ARG_TO, part.to)])
        }
        convertedGeneration = generation
        onTrainingLanes(lanes.count) { lane in try lanes[lane].forward(yp, pairs) }
    }

    func backward(_ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>?, _ dx: UnsafeMutablePointer<Float>?) {
        onTrainingLanes(lanes.count) { lane in try lanes[lane].backward(dy, dw, dx: dx != nil, pairs) }
        guard let dx else { return }
        // dx = Σ_l dx_l, each lane its images.
        onTrainingLanes(imageRanges.count) { lane in
            let range = imageRanges[lane]
            let start = range.lowerBound * inputs, count = range.count * inputs
            (dx + start).update(from: lanes[0].dx.data.assumingMemoryBound(to: Float.self) + start, count: count)
            for other in lanes.dropFirst() {
                let part = other.dx.data.assumingMemoryBound(to: Float.self) + start
                for i in 0..<count { dx[start + i] += part[i] }
            }
        }
    }

    /// One lane's output channels: their bf16 weight, dy and dx buffers and the three pair matmuls.
    final class Lane {
        let channels: Range<Int>
        let stream: Stream
        let inChannels: Int, outChannels: Int, taps: Int, pixelsIn: Int, pixelsOut: Int, batch: Int
        /// This lane's channels of the weight, bf16 OHWI [C, k·k·Cin], converted from the caller's fp32.
        let weight: Memory, toWeight: Primitive, userWeight: Memory
        /// This lane's channels of dy, bf16 [n, P, C], converted from the caller's fp32 [n, P, Cout].
        let dy: Memory, toDY: Primitive, userDY: Memory
        /// This lane's share of dx, fp32 [n, H·W·Cin].
        let dx: Memory
        let x: Memory
        /// Per pass, the matmul and the views it reads and writes (handles set per pair).
        let forwardPass: Pass, dataPass: Pass, weightsPass: Pass
        let scratchpad: Memory

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

        init(_ s: ConvShape, _ g: Geometry, channels: Range<Int>, x: Memory) throws {
            self.channels = channels
            self.x = x
            stream = try Stream()
            let out = g.output(of: s)
            let n = g.batch, c = channels.count, i = s.inChannels
            (inChannels, outChannels, taps, batch) = (i, s.outChannels, s.kernel * s.kernel, n)
            (pixelsIn, pixelsOut) = (g.height * g.width, out.height * out.width)
            let what = "\(s.kernel)x\(s.kernel)/\(s.stride) \(i)→\(s.outChannels)'s channels \(channels) by pairs"
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
            dx = try Memory(try memoryDesc([n, pixelsIn * i], dnnl_f32, dnnl_ab))

            func view(_ dims: [Int], _ strides: [Int], _ type: dnnl_data_type_t) throws -> dnnl_memory_desc_t {
                var desc = dnnl_memory_desc_t()
                try check(dnnl_memory_desc_init_by_strides(&desc, 2, dims.map { dnnl_dim_t($0) }, type, strides.map { dnnl_dim_t($0) }),
                          "describing \(what)")
                return desc
            }
            let accumulate = try Attributes(sum: (1, dnnl_data_type_undef), userScratchpad: true)
            func pass(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t, _ d: dnnl_memory_desc_t, _ name: String) throws -> Pass {
                var (aa, bb, dd) = (a, b, d)
                var desc = dnnl_matmul_desc_t()
                try check(dnnl_matmul_desc_init(&desc, &aa, &bb, nil, &dd), "describing \(what) (\(name))")
                return Pass(matmul: try Primitive(&desc, attributes: accumulate, what: "the bf16 \(what) (\(name))"),
                            a: try Memory(a, buffer: dangling), b: try Memory(b, buffer: dangling), d: try Memory(d, buffer: dangling))
            }
            let xPixel = try view([n, i], [pixelsIn * i, 1], dnnl_bf16)  // x[:, q, :]
            // y[:, p, C] += x[:, q, :] · W[C, t, :]ᵀ
            forwardPass = try pass(xPixel, try view([i, c], [1, taps * i], dnnl_bf16), try view([n, c], [pixelsOut * s.outChannels, 1], dnnl_f32),
                                   "forward")
            // dx_l[:, q, :] += dy[:, p, C] · W[C, t, :]
            dataPass = try pass(try view([n, c], [pixelsOut * c, 1], dnnl_bf16), try view([c, i], [taps * i, 1], dnnl_bf16),
                                try view([n, i], [pixelsIn * i, 1], dnnl_f32), "backward data")
            // dW[C, t, :] += dy[:, p, C]ᵀ · x[:, q, :]
            weightsPass = try pass(try view([c, n], [1, pixelsOut * c], dnnl_bf16), xPixel, try view([c, i], [taps * i, 1], dnnl_f32),
                                   "backward weights")
            let size = [toWeight, toDY, forwardPass.matmul, dataPass.matmul, weightsPass.matmul].map(\.scratchpadSize).max() ?? 0
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

        func forward(_ yp: UnsafeMutablePointer<Float>, _ pairs: [(p: Int, q: Int, t: Int)]) throws {
            // These channels of y, zeroed: every pair adds into them.
            for row in 0..<(batch * pixelsOut) {
                (yp + row * outChannels + channels.lowerBound).update(repeating: 0, count: channels.count)
            }
            for pair in pairs {
                try forwardPass.run(x.data + pair.q * inChannels * 2, weight.data + pair.t * inChannels * 2,
                                    UnsafeMutableRawPointer(yp + pair.p * outChannels + channels.lowerBound), stream, scratchpad)
            }
            try stream.wait()
        }

        func backward(_ dyp: UnsafePointer<Float>, _ dwp: UnsafeMutablePointer<Float>?, dx wantDX: Bool,
                      _ pairs: [(p: Int, q: Int, t: Int)]) throws {
            userDY.setData(UnsafeMutableRawPointer(mutating: dyp))
            try run(toDY, [(DNNL_ARG_FROM, userDY), (DNNL_ARG_TO, dy)])
            let c = channels.count
            if let dwp {
                let first = dwp + channels.lowerBound * taps * inChannels
                first.update(repeating: 0, count: c * taps * inChannels)
                for pair in pairs {
                    try weightsPass.run(dy.data + pair.p * c * 2, x.data + pair.q * inChannels * 2,
                                        UnsafeMutableRawPointer(first + pair.t * inChannels), stream, scratchpad)
                }
            }
            if wantDX {
                let target = dx.data.assumingMemoryBound(to: Float.self)
                target.update(repeating: 0, count: batch * pixelsIn * inChannels)
                for pair in pairs {
                    try dataPass.run(dy.data + pair.p * c * 2, weight.data + pair.t * inChannels * 2,
                                     UnsafeMutableRawPointer(target + pair.q * inChannels), stream, scratchpad)
                }
            }
            try stream.wait()
        }
    }
}
