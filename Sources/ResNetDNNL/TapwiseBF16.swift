import CDNNL
import CKernels
import ResNetModel

/// A bf16 inference convolution on a small map by taps, as `BF16PairwisePlan` trains one: for each tap t, the input
/// rows of its (output pixel p, input pixel q) pairs are stacked [k·n, Cin] and multiplied by the tap's weight
/// [Cin, Cout] (one oneDNN matmul, fp32 out), each block of products added to its output pixel's sums; then bias,
/// residual and ReLU to bf16 (`resnetkit_finish_bf16`). No multiply-add on padding, where a convolution kernel
/// spends 40 % of them on layer4's 3x3 maps (96x96 crops). Activations NHWC bf16; `dst` holds the residual on
/// entry when there is one.
final class TapwiseBF16 {
    let tapGroups: TapGroups
    /// Each group's tap weight, in the layout its matmul asks for.
    let weights: [Memory]
    let batch: Int, inChannels: Int, outChannels: Int, pixelsIn: Int, pixelsOut: Int
    let relu: Bool, addResidual: Bool
    let src: Memory, dst: Memory
    let bias: [Float]
    /// The matmul for taps of k pairs (key k), with its views of the stack and the products.
    let matmuls: [Int: (primitive: Primitive, a: Memory, d: Memory)]
    /// In the network's workspace (shared by a lane's layers, which run one after another): the pairs' input rows
    /// tap by tap, bf16 [pairs · n, Cin]; one tap's products, fp32 [k · n, Cout]; each output pixel's sums, fp32
    /// [n · P, Cout]. Offsets in floats.
    let workspace: FloatBuffer
    let productsAt: Int, sumsAt: Int, workspaceFloats: Int

    /// Whether convolution `s` can run by taps on input of `side`: larger than 1x1, at most
    /// `TapGroups.maximumOutputPixels` output pixels, and windows that leave padding (else one dense matmul does it).
    static func applies(_ s: ConvShape, _ side: (Int, Int)) -> Bool {
        s.kernel > 1 && s.outputSide(side.0) * s.outputSide(side.1) <= TapGroups.maximumOutputPixels
            && !DNNLPlan.windowsCoverInput(s, side)
    }

    /// Whether it pays where it applies: at most `EngineTuning.maximumTapUsefulFraction` of a convolution's (pixel,
    /// tap) products inside the input (the fp32 engine's rule for taps).
    static func pays(_ s: ConvShape, _ side: (Int, Int)) -> Bool {
        let products = s.outputSide(side.0) * s.outputSide(side.1) * s.kernel * s.kernel
        return Double(s.taps(side).count) <= EngineTuning.maximumTapUsefulFraction * Double(products)
    }

    /// The layer (folded), its input `src` (NHWC bf16, `side` pixels) and output `dst`; `weights(t, desc)` gives
    /// tap t's weight in the layout `desc` (`DNNLPlan.tapWeight`, shared by lanes and batch shapes).
    init(layer: DNNLPlan.Layer, batch n: Int, side: (Int, Int), src: Memory, dst: Memory, addResidual: Bool, relu: Bool,
         workspace: FloatBuffer, weights: (Int, dnnl_memory_desc_t) throws -> Memory) throws {
        let s = layer.shape
        (batch, inChannels, outChannels) = (n, s.inChannels, s.outChannels)
        (pixelsIn, pixelsOut) = (side.0 * side.1, s.outputSide(side.0) * s.outputSide(side.1))
        (self.relu, self.addResidual, self.src, self.dst, self.bias) = (relu, addResidual, src, dst, layer.bias)
        let tapGroups = TapGroups(s, side), sizes = tapGroups.sizes
        self.tapGroups = tapGroups
        let what = "\(layer.name) by taps"
        var matmuls: [Int: (primitive: Primitive, a: Memory, d: Memory)] = [:]
        let widest = (sizes.max() ?? 1) * n
        productsAt = (tapGroups.pairs * n * s.inChannels + 1) / 2  // the stack is bf16, two to a float
        sumsAt = productsAt + widest * s.outChannels
        workspaceFloats = sumsAt + n * pixelsOut * s.outChannels
        self.workspace = workspace
        _ = workspace.reserve(workspaceFloats)
        let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
        for k in sizes {
            var a = try memoryDesc([k * n, s.inChannels], dnnl_bf16, dnnl_ab)
            var b = try memoryDesc([s.inChannels, s.outChannels], dnnl_bf16, dnnl_format_tag_any)
            var d = try memoryDesc([k * n, s.outChannels], dnnl_f32, dnnl_ab)
            var desc = dnnl_matmul_desc_t()
            try check(dnnl_matmul_desc_init(&desc, &a, &b, nil, &d), "describing \(what)")
            let primitive = try Primitive(&desc, attributes: try Attributes(userScratchpad: true), what: what)
            matmuls[k] = (primitive, try Memory(a, buffer: dangling), try Memory(d, buffer: dangling))
        }
        self.matmuls = matmuls
        self.weights = try tapGroups.groups.map { group in
            try weights(group.tap, matmuls[group.pixels.count]!.primitive.md(dnnl_query_weights_md))
        }
    }

    var scratchpadSize: Int { matmuls.values.map(\.primitive.scratchpadSize).max() ?? 0 }

    /// The matmuls' implementation, e.g. `taps + brg:avx512_core_bf16`.
    var implementation: String { "taps + " + (matmuls.values.first?.primitive.implementation ?? "?") }

    /// Runs on the caller's lane (one OpenMP thread); `stream` must have finished what writes `src` and `dst`.
    func run(_ stream: Stream, _ scratchpad: Memory) throws {
        let rowBytes = inChannels * 2, space = workspace.reserve(workspaceFloats)
        let stacked = UnsafeMutableRawPointer(space), productRows = space + productsAt, sums = space + sumsAt
        tapGroups.stack(src.data, pixelsPerImage: pixelsIn, rowBytes: rowBytes, images: 0..<batch, batch: batch, into: stacked, \.q)
        sums.update(repeating: 0, count: batch * pixelsOut * outChannels)
        for (group, weights) in zip(tapGroups.groups, weights) {
            let (primitive, a, d) = matmuls[group.pixels.count]!
            a.setData(stacked + group.first * batch * rowBytes)
            d.setData(UnsafeMutableRawPointer(productRows))
            try primitive.execute([(DNNL_ARG_SRC, a), (DNNL_ARG_WEIGHTS, weights), (DNNL_ARG_DST, d),
                                   (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
            tapGroups.add(group, products: productRows, length: outChannels, batch: batch, into: sums, pixelsPerImage: pixelsOut,
                          stride: outChannels, \.p)
        }
        resnetkit_finish_bf16(sums, batch * pixelsOut, outChannels, bias, addResidual ? 1 : 0, relu ? 1 : 0,
                              dst.data.assumingMemoryBound(to: UInt16.self))
    }
}
