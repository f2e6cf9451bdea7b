import CDNNL
import CKernels
import ResNetModel

/// A bf16 inference convolution 3x3, stride 1, padding 1 as Winograd F(2x2, 3x3) (Lavin & Gray, 2015): per chunk
/// of 2x2 output tiles, the input transform V = Bᵀ d B (fp32 sums, bf16 result), one batched oneDNN matmul
///   M_ξ [tiles, Cout] = V_ξ [tiles, Cin] · U_ξ [Cin, Cout]     for the 16 positions ξ, fp32 accumulation,
/// and the output transform Y = Aᵀ M A with bias, residual and ReLU, to bf16 (`bf16_layers.c`). 16 multiplies
/// per tile and channel pair instead of 36: measured against oneDNN's brgconv on AVX512_BF16 (Zen 4), one lane
/// of 32 images: layer1 at 96x96 1.3–1.4x, layer2 1.6x, layer3 1.5x; at 49x49 1.1–1.2x, 1.1x, 1.4x; on 3x3 maps
/// (16 outputs for 9) 0.8x. Where AMX makes the multiplies several times cheaper, the transforms would dominate:
/// `DNNLPlan` uses it only on CPUs with native bf16 dot products and no AMX.
/// Accuracy: the reference model's logits within 0.6 % of PyTorch's fp32 (direct bf16: 0.45 %), tested.
///
/// The input is NHWC bf16 (what brgconv keeps activations in). The output is NHWC bf16 with the inference
/// epilogue, written over `dst`, which holds the residual on entry when there is one; or, for a training network's
/// forward (`BF16ForwardPlan`, BatchNorm follows), NHWC fp32, the convolution alone.
final class WinogradBF16 {
    enum Output {
        case bf16(bias: [Float], addResidual: Bool, relu: Bool)
        case f32
    }
    let batch: Int, height: Int, width: Int, inChannels: Int, outChannels: Int
    let output: Output
    let src: Memory, dst: Memory
    /// U_ξ in the layout the matmul chose, bf16.
    let weights: Memory
    let tiles: Int, tilesPerChunk: Int
    /// The matmul for a full chunk and, when the tiles do not divide evenly, for the last one.
    let matmul: Primitive, lastMatmul: Primitive?
    /// Views of a chunk's V [16, tiles, Cin] bf16 and M [16, tiles, Cout] fp32 (and of the last chunk's), placed in
    /// the network's workspace when it runs: the layers of a lane run one after another and share it.
    let v: Memory, m: Memory, lastV: Memory?, lastM: Memory?
    let workspace: FloatBuffer
    /// V's floats in the workspace (M follows), and both.
    let vFloats: Int, workspaceFloats: Int
    /// Scratch of the transforms: padding zeros, 16 rows of floats, one spare output pixel (bf16 or fp32).
    private var zeros: [UInt16], rows: [Float], spare: [Float]

    /// The layout of `WinogradConv.transformedWeight`'s U (fp32, stored [16, Cout, Cin]) as the matmul's weights:
    /// dims [16, Cin, Cout] in `acb` order.
    static func transformedWeightLayout(_ s: ConvShape) throws -> dnnl_memory_desc_t {
        try memoryDesc([16, s.inChannels, s.outChannels], dnnl_f32, dnnl_acb)
    }

    /// Where Winograd applies: a 3x3/1 'same' convolution whose windows do not cover the whole input (there one
    /// dense matmul does the layer, no padding, no transforms).
    static func applies(_ s: ConvShape, _ side: (Int, Int)) -> Bool {
        WinogradConv.supports(s) && !DNNLPlan.windowsCoverInput(s, side)
    }

    /// Where it pays in inference, for a lane's input: it covers the map well and the lane has tiles enough for
    /// the weights (the fp32 engine's rules).
    static func pays(_ s: ConvShape, laneInput: Geometry) -> Bool {
        WinogradConv.coversWell(laneInput) && WinogradConv.tiles(laneInput) * EngineTuning.winogradOutputChannelsPerTile >= s.outChannels
    }

    /// Where it pays in a training network's forward (fp32 output, BatchNorm after it: less margin than
    /// inference's fused bf16 epilogue): as in inference, on maps of even sides (no tile past the edge) and with
    /// at least `EngineTuning.bf16WinogradTiles`' minimum of tiles in the lane (fewer rows slow the matmul).
    /// Measured on Zen 4, head phase: at 96x96 layer1 +8 %, layer2 +8 % (batch 16), layer3 +5 % (batch 64); at
    /// 49x49, batch 16 (13x13 and 7x7 maps, 32 tiles on 4x4) each of them 2–3 % slower.
    static func paysInTraining(_ s: ConvShape, laneInput g: Geometry) -> Bool {
        pays(s, laneInput: g) && g.height % 2 == 0 && g.width % 2 == 0
            && WinogradConv.tiles(g) >= EngineTuning.bf16WinogradMinimumTiles
    }

    /// The inference layer (folded): its input `src` (NHWC bf16, `side` pixels) and output `dst` (NHWC bf16).
    convenience init(layer: DNNLPlan.Layer, batch: Int, side: (Int, Int), src: Memory, dst: Memory, addResidual: Bool, relu: Bool,
                     workspace: FloatBuffer, weights: (dnnl_memory_desc_t) throws -> Memory) throws {
        try self.init(layer.shape, batch: batch, side: side, src: src, dst: dst,
                      output: .bf16(bias: layer.bias, addResidual: addResidual, relu: relu), workspace: workspace, weights: weights)
    }

    /// Convolution `s` from `src` (NHWC bf16, `side` pixels) to `dst` as `output` says; `weights` gives U in the
    /// layout the matmul asks for (`DNNLPlan.winogradWeight`, shared by lanes and batch shapes). Fails where oneDNN
    /// has no matmul for it.
    init(_ s: ConvShape, batch: Int, side: (Int, Int), src: Memory, dst: Memory, output: Output,
         workspace: FloatBuffer, weights: (dnnl_memory_desc_t) throws -> Memory) throws {
        precondition(WinogradConv.supports(s), "Winograd F(2x2, 3x3) needs a 3x3 stride-1 'same' convolution")
        (self.batch, height, width, inChannels, outChannels) = (batch, side.0, side.1, s.inChannels, s.outChannels)
        (self.output, self.src, self.dst) = (output, src, dst)
        tiles = WinogradConv.tiles(Geometry(batch: batch, height: side.0, width: side.1))
        // Chunks of equal size (a last one of a few tiles would run its matmul at a fraction of the rate).
        let most = EngineTuning.bf16WinogradTiles(inChannels: s.inChannels), chunks = (tiles + most - 1) / most
        tilesPerChunk = (tiles + chunks - 1) / chunks
        let what = "the Winograd 3x3 \(s.inChannels)→\(s.outChannels) on \(side.0)x\(side.1)"
        let dangling = UnsafeMutableRawPointer(bitPattern: 64)!
        self.workspace = workspace
        vFloats = (16 * tilesPerChunk * s.inChannels + 1) / 2  // bf16, two to a float
        workspaceFloats = vFloats + 16 * tilesPerChunk * s.outChannels
        _ = workspace.reserve(workspaceFloats)
        func make(_ rows: Int) throws -> (Primitive, Memory, Memory) {
            var a = try memoryDesc([16, rows, s.inChannels], dnnl_bf16, dnnl_abc)
            var b = try memoryDesc([16, s.inChannels, s.outChannels], dnnl_bf16, dnnl_format_tag_any)
            var d = try memoryDesc([16, rows, s.outChannels], dnnl_f32, dnnl_abc)
            var desc = dnnl_matmul_desc_t()
            try check(dnnl_matmul_desc_init(&desc, &a, &b, nil, &d), "describing \(what)")
            let primitive = try Primitive(&desc, attributes: try Attributes(userScratchpad: true), what: what)
            return (primitive, try Memory(a, buffer: dangling), try Memory(d, buffer: dangling))
        }
        (matmul, v, m) = try make(tilesPerChunk)
        let last = tiles % tilesPerChunk
        if last > 0 {
            let (primitive, a, d) = try make(last)
            (lastMatmul, lastV, lastM) = (primitive, a, d)
        } else {
            (lastMatmul, lastV, lastM) = (nil, nil, nil)
        }
        self.weights = try weights(matmul.md(dnnl_query_weights_md))
        zeros = [UInt16](repeating: 0, count: s.inChannels)
        rows = [Float](repeating: 0, count: 16 * max(s.inChannels, s.outChannels))
        spare = [Float](repeating: 0, count: s.outChannels)
    }

    var scratchpadSize: Int { max(matmul.scratchpadSize, lastMatmul?.scratchpadSize ?? 0) }

    /// The matmul's implementation, e.g. `winograd + brg:avx512_core_bf16`.
    var implementation: String { "winograd + " + matmul.implementation }

    /// Runs on the caller's lane (one OpenMP thread); `stream` must have finished what writes `src` and `dst`.
    func run(_ stream: Stream, _ scratchpad: Memory) throws {
        let source = src.data.assumingMemoryBound(to: UInt16.self)
        let space = workspace.reserve(workspaceFloats)
        let vp = UnsafeMutableRawPointer(space).assumingMemoryBound(to: UInt16.self), mp = space + vFloats
        for view in [v, lastV].compactMap({ $0 }) { view.setData(UnsafeMutableRawPointer(vp)) }
        for view in [m, lastM].compactMap({ $0 }) { view.setData(UnsafeMutableRawPointer(mp)) }
        var first = 0
        while first < tiles {
            let count = min(tilesPerChunk, tiles - first)
            let (primitive, a, d) = count == tilesPerChunk ? (matmul, v, m) : (lastMatmul!, lastV!, lastM!)
            rows.withUnsafeMutableBufferPointer { rows in
                resnetkit_winograd_input_bf16(source, height, width, inChannels, first, count, zeros, rows.baseAddress!, vp)
            }
            try primitive.execute([(DNNL_ARG_SRC, a), (DNNL_ARG_WEIGHTS, weights), (DNNL_ARG_DST, d),
                                   (DNNL_ARG_SCRATCHPAD, scratchpad)], on: stream)
            try stream.wait()
            rows.withUnsafeMutableBufferPointer { rows in
                spare.withUnsafeMutableBufferPointer { spare in
                    switch output {
                    case let .bf16(bias, addResidual, relu):
                        resnetkit_winograd_output_bf16(mp, height, width, outChannels, first, count, bias, addResidual ? 1 : 0, relu ? 1 : 0,
                                                       rows.baseAddress!, dst.data.assumingMemoryBound(to: UInt16.self),
                                                       UnsafeMutableRawPointer(spare.baseAddress!).assumingMemoryBound(to: UInt16.self))
                    case .f32:
                        resnetkit_winograd_output_f32(mp, height, width, outChannels, first, count, rows.baseAddress!,
                                                      dst.data.assumingMemoryBound(to: Float.self), spare.baseAddress!)
                    }
                }
            }
            first += count
        }
    }
}
