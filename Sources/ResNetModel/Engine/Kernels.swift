import COpenBLAS
import Dispatch

// Low-level kernels over NHWC activations. An activation is a row-major matrix [pixels, channels],
// pixels = N·H·W, so a convolution is one GEMM over the whole batch: out[P, Cout] = col[P, k·k·Cin] · Wᵀ.

/// c[m, n] = alpha · a[m, k] · b[n, k]ᵀ + beta · c (row-major; b is stored as [n, k] rows).
@inline(__always)
func gemmABt(_ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, _ lda: Int,
             _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
             alpha: Float = 1, beta: Float = 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// c[m, n] = alpha · a[m, k] · b[k, n] + beta · c (row-major).
@inline(__always)
func gemmAB(_ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, _ lda: Int,
            _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
            alpha: Float = 1, beta: Float = 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// c[m, n] = alpha · a[k, m]ᵀ · b[k, n] + beta · c (row-major): the weight-gradient product.
@inline(__always)
func gemmAtB(_ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, _ lda: Int,
             _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
             alpha: Float = 1, beta: Float = 0) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// torchvision [out, in, kh, kw] → patch-major [out, kh, kw, in], matching im2col's column order.
public func patchMajorWeight(_ weight: [Float], _ s: ConvShape) -> [Float] {
    var out = [Float](repeating: 0, count: weight.count)
    let k = s.kernel, cin = s.inChannels
    for o in 0..<s.outChannels {
        for c in 0..<cin {
            for kh in 0..<k {
                for kw in 0..<k {
                    out[((o * k + kh) * k + kw) * cin + c] = weight[((o * cin + c) * k + kh) * k + kw]
                }
            }
        }
    }
    return out
}

/// Patch-major [out, kh, kw, in] → torchvision [out, in, kh, kw].
public func torchWeight(_ patchMajor: [Float], _ s: ConvShape) -> [Float] {
    var out = [Float](repeating: 0, count: patchMajor.count)
    let k = s.kernel, cin = s.inChannels
    for o in 0..<s.outChannels {
        for c in 0..<cin {
            for kh in 0..<k {
                for kw in 0..<k {
                    out[((o * cin + c) * k + kh) * k + kw] = patchMajor[((o * k + kh) * k + kw) * cin + c]
                }
            }
        }
    }
    return out
}

/// Spatial extent of an NHWC activation.
public struct Geometry: Equatable, Sendable {
    public var batch: Int, height: Int, width: Int
    public init(batch: Int, height: Int, width: Int) { self.batch = batch; self.height = height; self.width = width }
    public var pixels: Int { batch * height * width }
    public func output(of s: ConvShape) -> Geometry {
        Geometry(batch: batch, height: s.outputSide(height), width: s.outputSide(width))
    }
}

/// im2col over NHWC: writes rows `firstRow ..< firstRow + rows` of col[P, kh·kw·Cin] for the output pixels
/// of convolution `s`. For a fixed kernel row the kw-run of input pixels is contiguous in NHWC, so each
/// (pixel, kh) is one copy plus zero fill at the borders.
func im2col(_ s: ConvShape, _ input: UnsafePointer<Float>, _ g: Geometry, firstRow: Int, rows: Int,
            _ col: UnsafeMutablePointer<Float>, threads: Int = Parallelism.threads) {
    let out = g.output(of: s)
    let k = s.kernel, cin = s.inChannels, patch = s.patchSize
    let top = s.pads(g.height).before, left = s.pads(g.width).before
    Parallelism.forEachRange(rows, minimumPerThread: max(1, EngineTuning.copyFloatsPerPart / patch), threads: threads) { range in
        for r in range {
            let p = firstRow + r
            let wo = p % out.width, ho = (p / out.width) % out.height, n = p / (out.width * out.height)
            let dst = col + r * patch
            let iw0 = wo * s.stride - left
            let kwFirst = max(0, -iw0), kwEnd = min(k, g.width - iw0)
            for kh in 0..<k {
                let ih = ho * s.stride - top + kh
                let rowDst = dst + kh * k * cin
                guard ih >= 0, ih < g.height, kwEnd > kwFirst else {
                    rowDst.update(repeating: 0, count: k * cin)
                    continue
                }
                if kwFirst > 0 { rowDst.update(repeating: 0, count: kwFirst * cin) }
                let src = input + ((n * g.height + ih) * g.width + iw0 + kwFirst) * cin
                (rowDst + kwFirst * cin).update(from: src, count: (kwEnd - kwFirst) * cin)
                if kwEnd < k { (rowDst + kwEnd * cin).update(repeating: 0, count: (k - kwEnd) * cin) }
            }
        }
    }
}

/// out[p, c] = max(0?, out[p, c] + bias[c] + residual[p, c]) over `rows` rows: the fused conv epilogue.
func biasResidualReLU(_ out: UnsafeMutablePointer<Float>, rows: Int, channels: Int,
                      bias: UnsafePointer<Float>, residual: UnsafePointer<Float>?, relu: Bool,
                      threads: Int = Parallelism.threads) {
    Parallelism.forEachRange(rows, minimumPerThread: max(1, EngineTuning.elementwiseFloatsPerPart / channels), threads: threads) { range in
        for r in range {
            let o = out + r * channels
            if let residual {
                let res = residual + r * channels
                if relu {
                    for c in 0..<channels { o[c] = max(0, o[c] + bias[c] + res[c]) }
                } else {
                    for c in 0..<channels { o[c] = o[c] + bias[c] + res[c] }
                }
            } else if relu {
                for c in 0..<channels { o[c] = max(0, o[c] + bias[c]) }
            } else {
                for c in 0..<channels { o[c] = o[c] + bias[c] }
            }
        }
    }
}

/// Max pool over NHWC with window `pool` (3x3 / 2, padding 1 for ResNet; padding never wins, as in PyTorch
/// and TensorFlow). Returns the output geometry. The first maximum in scan order wins, as in PyTorch. `window`,
/// when given, receives for each output the tap (ky·k + kx) of its maximum, for the backward pass.
@discardableResult
func maxPool(_ pool: ConvShape, _ input: UnsafePointer<Float>, _ g: Geometry, channels: Int,
             _ output: UnsafeMutablePointer<Float>, window: UnsafeMutablePointer<UInt8>? = nil,
             threads: Int = Parallelism.threads) -> Geometry {
    let k = pool.kernel, s = pool.stride
    let top = pool.pads(g.height).before, left = pool.pads(g.width).before
    let oh = pool.outputSide(g.height), ow = pool.outputSide(g.width)
    let outG = Geometry(batch: g.batch, height: oh, width: ow)
    Parallelism.forEachRange(outG.pixels, minimumPerThread: EngineTuning.minimumPoolPixelsPerPart, threads: threads) { range in
        // The valid taps of one output: input rows and their tap numbers (at most k·k).
        withUnsafeTemporaryAllocation(of: (UnsafePointer<Float>, UInt8).self, capacity: k * k) { taps in
            for p in range {
                let x = p % ow, y = (p / ow) % oh, n = p / (ow * oh)
                var count = 0
                for ky in 0..<k {
                    let iy = y * s - top + ky
                    guard iy >= 0, iy < g.height else { continue }
                    for kx in 0..<k {
                        let ix = x * s - left + kx
                        guard ix >= 0, ix < g.width else { continue }
                        taps[count] = (input + ((n * g.height + iy) * g.width + ix) * channels, UInt8(ky * k + kx))
                        count += 1
                    }
                }
                maxOverTaps(taps.baseAddress!, count: count, channels: channels, output + p * channels,
                            window: window.map { $0 + p * channels })
            }
        }
    }
    return outG
}

/// Channel-wise maximum over `count` ≥ 1 input rows: the first tap initialises, a later one wins only when
/// strictly greater. Eight channels at a time in registers, then the remainder.
@inline(__always)
private func maxOverTaps(_ taps: UnsafePointer<(UnsafePointer<Float>, UInt8)>, count: Int, channels: Int,
                         _ dst: UnsafeMutablePointer<Float>, window: UnsafeMutablePointer<UInt8>?) {
    typealias Vector = SIMD8<Float>
    var c = 0
    while c + Vector.scalarCount <= channels {
        var best = UnsafeRawPointer(taps[0].0 + c).loadUnaligned(as: Vector.self)
        var bestTap = SIMD8<Int32>(repeating: Int32(taps[0].1))
        for t in 1..<count {
            let v = UnsafeRawPointer(taps[t].0 + c).loadUnaligned(as: Vector.self)
            let greater = v .> best
            best.replace(with: v, where: greater)
            if window != nil { bestTap.replace(with: Int32(taps[t].1), where: greater) }
        }
        UnsafeMutableRawPointer(dst + c).storeBytes(of: best, as: Vector.self)
        if let window {
            UnsafeMutableRawPointer(window + c).storeBytes(of: SIMD8<UInt8>(truncatingIfNeeded: bestTap), as: SIMD8<UInt8>.self)
        }
        c += Vector.scalarCount
    }
    while c < channels {
        var best = taps[0].0[c], bestTap = taps[0].1
        for t in 1..<count where taps[t].0[c] > best { best = taps[t].0[c]; bestTap = taps[t].1 }
        dst[c] = best
        window?[c] = bestTap
        c += 1
    }
}

/// Global average pool over NHWC: [N, H·W, C] → [N, C].
public func globalAveragePool(_ input: UnsafePointer<Float>, _ g: Geometry, channels: Int,
                              _ output: UnsafeMutablePointer<Float>) {
    let area = g.height * g.width
    let scale = 1 / Float(area)
    for n in 0..<g.batch {
        let dst = output + n * channels
        dst.update(repeating: 0, count: channels)
        for i in 0..<area {
            let src = input + (n * area + i) * channels
            for c in 0..<channels { dst[c] += src[c] }
        }
        for c in 0..<channels { dst[c] *= scale }
    }
}

/// The adjoint of im2col: adds each column row back onto the input pixels it was copied from.
/// Images are independent, so lanes split the chunk by image and never write the same pixel.
func col2imAdd(_ s: ConvShape, _ col: UnsafePointer<Float>, _ g: Geometry, firstImage: Int, images: Int,
               _ dx: UnsafeMutablePointer<Float>) {
    let out = g.output(of: s)
    let k = s.kernel, cin = s.inChannels, patch = s.patchSize, perImage = out.height * out.width
    let top = s.pads(g.height).before, left = s.pads(g.width).before
    TrainingLanes.forEachRange(images, minimum: 1) { range in
        for i in range {
            let n = firstImage + i
            for q in 0..<perImage {
                let wo = q % out.width, ho = q / out.width
                let src = col + (i * perImage + q) * patch
                let iw0 = wo * s.stride - left
                let kwFirst = max(0, -iw0), kwEnd = min(k, g.width - iw0)
                guard kwEnd > kwFirst else { continue }
                let run = (kwEnd - kwFirst) * cin
                for kh in 0..<k {
                    let ih = ho * s.stride - top + kh
                    guard ih >= 0, ih < g.height else { continue }
                    let dst = dx + ((n * g.height + ih) * g.width + iw0 + kwFirst) * cin
                    let from = src + (kh * k + kwFirst) * cin
                    for j in 0..<run { dst[j] += from[j] }
                }
            }
        }
    }
}
