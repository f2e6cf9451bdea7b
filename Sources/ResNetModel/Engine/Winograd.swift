/// Winograd F(2x2, 3x3) for the 3x3 stride-1 padding-1 convolutions (Lavin & Gray, 2015).
///
/// Each 2x2 tile of output pixels costs 16 multiplies per (input, output) channel pair instead of 36: the
/// 4x4 input patch d is transformed to V = Bᵀ d B, the filter g to U = G g Gᵀ, and for each of the 16
/// positions ξ the products over input channels are one GEMM, M_ξ[tiles, Cout] = V_ξ[tiles, Cin] · U_ξᵀ.
/// The output transform Y = Aᵀ M A gives the 2x2 pixels, and applies bias, residual and ReLU on the way.
/// B, G and A hold only 0, ±1 and ±½, so the transforms are exact up to float rounding of the sums.
///
/// V and M are tile-major ([tiles, 16, C]) so that each tile's transform touches one contiguous block; the
/// GEMMs read V_ξ and write M_ξ with a leading dimension of 16·C. Tiles go in chunks sized from L2.
public struct WinogradConv {
    let inChannels: Int, outChannels: Int
    /// U_ξ for ξ = 4·i + j: 16 matrices [Cout, Cin], rows in the GEMM's Bᵀ orientation.
    let weight: [Float]
    let bias: [Float]

    /// From a patch-major folded weight [out, kh, kw, in] (3x3) and its bias.
    init(patchMajorWeight w: [Float], bias: [Float], inChannels: Int, outChannels: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.bias = bias
        weight = Self.transformedWeight(patchMajor: w, inChannels: inChannels, outChannels: outChannels)
    }

    /// U_ξ = G g Gᵀ for ξ = 4i + j, [16, Cout, Cin], from a patch-major weight [out, 3, 3, in] (also oneDNN's
    /// bf16 Winograd in ResNetDNNL).
    public static func transformedWeight(patchMajor w: [Float], inChannels: Int, outChannels: Int) -> [Float] {
        // G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1] applied to a column (a, b, c).
        func g(_ a: Float, _ b: Float, _ c: Float) -> SIMD4<Float> { SIMD4(a, (a + b + c) / 2, (a - b + c) / 2, c) }
        var u = [Float](repeating: 0, count: 16 * outChannels * inChannels)
        for o in 0..<outChannels {
            for c in 0..<inChannels {
                func tap(_ kh: Int, _ kw: Int) -> Float { w[((o * 3 + kh) * 3 + kw) * inChannels + c] }
                // G g one filter column at a time, then each row of the result times Gᵀ.
                let columns = (0..<3).map { kw in g(tap(0, kw), tap(1, kw), tap(2, kw)) }
                for i in 0..<4 {
                    let row = g(columns[0][i], columns[1][i], columns[2][i])
                    for j in 0..<4 { u[((i * 4 + j) * outChannels + o) * inChannels + c] = row[j] }
                }
            }
        }
        return u
    }

    /// 2x2 output tiles of a layer with this input geometry (same size as the output).
    public static func tiles(_ g: Geometry) -> Int { g.batch * ((g.height + 1) / 2) * ((g.width + 1) / 2) }

    /// Tiles per chunk, so that V and M (16 · tiles · (Cin + Cout) floats) stay within the engine's chunk size.
    private var tilesPerChunk: Int { max(16, EngineTuning.winogradChunkFloats / (16 * (inChannels + outChannels))) }

    /// The scratch memory `run` needs: V and M for one chunk, then Cin zeros (what the padding reads).
    var scratchFloats: Int { 16 * tilesPerChunk * (inChannels + outChannels) + inChannels }

    /// input [N·H·W, Cin] → output [N·H·W, Cout] = ReLU?(conv(input) + bias + residual), using
    /// `scratchFloats` floats of `scratch`. Channel counts must be multiples of 4 (`WinogradConv.supports`).
    func run(_ input: UnsafePointer<Float>, _ g: Geometry, _ output: UnsafeMutablePointer<Float>,
             residual: UnsafePointer<Float>?, relu: Bool, scratch: UnsafeMutablePointer<Float>) {
        let tiles = Self.tiles(g), chunk = tilesPerChunk
        let zeros = paddingZeros(in: scratch)
        var first = 0
        while first < tiles {
            let chunkTiles = first ..< min(first + chunk, tiles)
            let (v, m) = transformed(in: scratch, tiles: chunkTiles.count)
            transformInput(input, g, tiles: chunkTiles, into: v, zeros: zeros)
            multiply(v, tiles: chunkTiles.count, into: m, columns: 0..<outChannels)
            transformOutput(m, g, tiles: chunkTiles, columns: 0..<outChannels, output, residual: residual, relu: relu)
            first = chunkTiles.upperBound
        }
    }

    /// The Cin zeros that the padding's pixels read, at the end of a scratch of `scratchFloats` (zeroed here).
    func paddingZeros(in scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        let zeros = scratch + scratchFloats - inChannels
        zeros.update(repeating: 0, count: inChannels)
        return UnsafePointer(zeros)
    }

    /// V [tiles, 16, Cin] and M [tiles, 16, Cout] for up to a chunk of tiles, at the start of the scratch.
    func transformed(in scratch: UnsafeMutablePointer<Float>, tiles: Int) -> (v: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>) {
        precondition(tiles <= tilesPerChunk, "more tiles than one chunk's scratch holds")
        return (scratch, scratch + 16 * tiles * inChannels)
    }

    /// V = Bᵀ d B for `tiles` (numbered image by image, row by row) into v, tile-major [tiles, 16, Cin] from
    /// the first of them; `zeros` holds Cin zeros for the pixels of the padding.
    func transformInput(_ input: UnsafePointer<Float>, _ g: Geometry, tiles: Range<Int>, into v: UnsafeMutablePointer<Float>,
                        zeros: UnsafePointer<Float>) {
        let tilesHigh = (g.height + 1) / 2, tilesWide = (g.width + 1) / 2, cin = inChannels
        withUnsafeTemporaryAllocation(of: UnsafePointer<Float>.self, capacity: 16) { patch in
            for tile in tiles {
                let tx = tile % tilesWide, ty = (tile / tilesWide) % tilesHigh, n = tile / (tilesWide * tilesHigh)
                for i in 0..<4 {
                    let y = 2 * ty - 1 + i
                    for j in 0..<4 {
                        let x = 2 * tx - 1 + j
                        patch[i * 4 + j] = y >= 0 && y < g.height && x >= 0 && x < g.width
                            ? input + ((n * g.height + y) * g.width + x) * cin : zeros
                    }
                }
                Self.inputTransform(patch.baseAddress!, cin, v + (tile - tiles.lowerBound) * 16 * cin, stride: cin)
            }
        }
    }

    /// M_ξ[:, columns] = V_ξ · U_ξ[columns]ᵀ for the 16 positions ξ: m is tile-major [tiles, 16, Cout].
    func multiply(_ v: UnsafePointer<Float>, tiles: Int, into m: UnsafeMutablePointer<Float>, columns: Range<Int>) {
        let cin = inChannels, cout = outChannels
        weight.withUnsafeBufferPointer { u in
            for xi in 0..<16 {
                gemmABt(tiles, columns.count, cin, v + xi * cin, 16 * cin, u.baseAddress! + (xi * cout + columns.lowerBound) * cin, cin,
                        m + xi * cout + columns.lowerBound, 16 * cout)
            }
        }
    }

    /// Y = Aᵀ M A (+ bias, + residual, ReLU) for `tiles` (m holds them from the first) and the output channels
    /// `columns` (in fours), written to the pixels of each tile that exist.
    func transformOutput(_ m: UnsafePointer<Float>, _ g: Geometry, tiles: Range<Int>, columns: Range<Int>,
                         _ output: UnsafeMutablePointer<Float>, residual: UnsafePointer<Float>?, relu: Bool) {
        let tilesHigh = (g.height + 1) / 2, tilesWide = (g.width + 1) / 2, cout = outChannels
        let first = columns.lowerBound
        bias.withUnsafeBufferPointer { b in
            for tile in tiles {
                let tx = tile % tilesWide, ty = (tile / tilesWide) % tilesHigh, n = tile / (tilesWide * tilesHigh)
                let pixel = (n * g.height + 2 * ty) * g.width + 2 * tx
                Self.outputTransform(m + (tile - tiles.lowerBound) * 16 * cout + first, stride: cout, columns.count,
                                     bias: b.baseAddress! + first, output + pixel * cout + first,
                                     residual: residual.map { $0 + pixel * cout + first }, rowStride: g.width * cout,
                                     pixelStride: cout, rows: min(2, g.height - 2 * ty), columns: min(2, g.width - 2 * tx),
                                     relu: relu)
            }
        }
    }

    /// Whether the whole batch's V and M fit one chunk: then lanes can share one input transform and split the
    /// multiplies and the output transform by output channels, each packing only its part of the weights.
    func fitsOneChunk(_ g: Geometry) -> Bool { Self.tiles(g) <= tilesPerChunk }

    /// Whether 2x2 tiles cover a layer of this size well enough to pay: at most 1.4 times its pixels (an odd
    /// 3x3 layer takes four tiles, 16 outputs for 9, which is not worth it).
    public static func coversWell(_ g: Geometry) -> Bool {
        ((g.height + 1) / 2 * 2) * ((g.width + 1) / 2 * 2) * 5 <= 7 * g.height * g.width
    }

    /// Whether Winograd pays for convolution `s` over one lane's share of a batch: it applies, its tiles cover
    /// the layer well, and the lane has enough tiles (`EngineTuning.winogradOutputChannelsPerTile`).
    static func pays(_ s: ConvShape, laneInput g: Geometry) -> Bool {
        supports(s) && coversWell(g) && tiles(g) * EngineTuning.winogradOutputChannelsPerTile >= s.outChannels
    }

    /// Whether F(2x2, 3x3) as implemented here applies: 3x3, stride 1, padding 1 (which 'same' is at stride 1),
    /// channels in fours.
    public static func supports(_ s: ConvShape) -> Bool {
        s.kernel == 3 && s.stride == 1 && (s.padding == 1 || s.samePadding) && s.inChannels % 4 == 0 && s.outChannels % 4 == 0
    }

    @inline(__always)
    private static func load(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
    }

    @inline(__always)
    private static func store(_ value: SIMD4<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: value, as: SIMD4<Float>.self)
    }

    /// Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1] applied to a column (a, b, c, d).
    @inline(__always)
    private static func bT(_ a: SIMD4<Float>, _ b: SIMD4<Float>, _ c: SIMD4<Float>, _ d: SIMD4<Float>)
        -> (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>, SIMD4<Float>) {
        (a - c, b + c, c - b, b - d)
    }

    /// Aᵀ = [1 1 1 0; 0 1 −1 −1] applied to a column (a, b, c, d).
    @inline(__always)
    private static func aT(_ a: SIMD4<Float>, _ b: SIMD4<Float>, _ c: SIMD4<Float>, _ d: SIMD4<Float>)
        -> (SIMD4<Float>, SIMD4<Float>) {
        (a + b + c, b - c - d)
    }

    /// V = Bᵀ d B for one tile, four channels at a time: patch[4i + j] points at input pixel (i, j)'s
    /// channels; V_ξ goes to out + ξ · stride.
    @inline(__always)
    private static func inputTransform(_ patch: UnsafePointer<UnsafePointer<Float>>, _ channels: Int,
                                       _ out: UnsafeMutablePointer<Float>, stride: Int) {
        for c in Swift.stride(from: 0, to: channels, by: 4) {
            @inline(__always) func d(_ k: Int) -> SIMD4<Float> { load(patch[k] + c) }
            @inline(__always) func put(_ i: Int, _ row: (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>, SIMD4<Float>)) {
                let p = out + c + 4 * i * stride
                store(row.0, p)
                store(row.1, p + stride)
                store(row.2, p + 2 * stride)
                store(row.3, p + 3 * stride)
            }
            // Bᵀ d one column at a time, then each row of the result times B.
            let c0 = bT(d(0), d(4), d(8), d(12)), c1 = bT(d(1), d(5), d(9), d(13))
            let c2 = bT(d(2), d(6), d(10), d(14)), c3 = bT(d(3), d(7), d(11), d(15))
            put(0, bT(c0.0, c1.0, c2.0, c3.0))
            put(1, bT(c0.1, c1.1, c2.1, c3.1))
            put(2, bT(c0.2, c1.2, c2.2, c3.2))
            put(3, bT(c0.3, c1.3, c2.3, c3.3))
        }
    }

    /// Y = Aᵀ M A for one tile, `channels` channels four at a time (M_ξ at m + ξ · stride), plus bias and
    /// residual, then ReLU; writes the `rows` x `columns` pixels that exist (a tile may overhang the border).
    @inline(__always)
    private static func outputTransform(_ m: UnsafePointer<Float>, stride: Int, _ channels: Int,
                                        bias: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                                        residual: UnsafePointer<Float>?, rowStride: Int, pixelStride: Int,
                                        rows: Int, columns: Int, relu: Bool) {
        for c in Swift.stride(from: 0, to: channels, by: 4) {
            @inline(__always) func x(_ k: Int) -> SIMD4<Float> { load(m + k * stride + c) }
            let s0 = aT(x(0), x(4), x(8), x(12)), s1 = aT(x(1), x(5), x(9), x(13))
            let s2 = aT(x(2), x(6), x(10), x(14)), s3 = aT(x(3), x(7), x(11), x(15))
            let top = aT(s0.0, s1.0, s2.0, s3.0), bottom = aT(s0.1, s1.1, s2.1, s3.1)
            let b = load(bias + c)
            @inline(__always) func put(_ value: SIMD4<Float>, _ i: Int, _ j: Int) {
                guard i < rows && j < columns else { return }
                let offset = i * rowStride + j * pixelStride + c
                var y = value + b
                if let residual { y += load(residual + offset) }
                if relu { y.replace(with: 0, where: y .< 0) }
                store(y, out + offset)
            }
            put(top.0, 0, 0)
            put(top.1, 0, 1)
            put(bottom.0, 1, 0)
            put(bottom.1, 1, 1)
        }
    }
}
