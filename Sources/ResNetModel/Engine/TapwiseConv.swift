/// A convolution on a small map, as one GEMM per kernel tap over only the output pixels whose input for that
/// tap lies inside the image.
///
/// A k×k convolution is the sum of k² shifted 1x1 convolutions. im2col runs them as one GEMM, the zeros of the
/// padding included; on layer4's 2x2 maps (49x49 input) a 3x3 tap reads inside the image for only 16 of the 36
/// (pixel, tap) pairs, so more than half of that GEMM multiplies zeros. Here tap t gathers the input rows its
/// valid pixels read (`gather`), multiplies them by its own [Cout, Cin] block of the patch-major weight (a
/// column block: no copy), and adds the products onto those output rows. The weights are still read once,
/// the zeros cost nothing.
///
/// Layouts as everywhere here: activations NHWC [pixels, channels], weight patch-major [Cout, kh, kw, Cin].
/// Backward: dW's tap block = dY_tᵀ · G_t and dX += scatter(dY_t · W_t), with dY_t the output-gradient rows
/// of tap t's pixels (`gatherOutputRows`).
struct TapwiseConv {
    let shape: ConvShape
    let inputHeight: Int, inputWidth: Int
    /// Input and output pixels of one image.
    let inputArea: Int, outputArea: Int
    /// The taps that reach inside the image for some pixel, the one that covers every output first.
    let taps: [Tap]
    /// Whether `taps[0]` reads inside the image for every output pixel.
    let firstTapCoversAll: Bool
    /// Rows of the gathered buffer per image (the identity tap needs none).
    let gatheredRowsPerImage: Int
    /// Kernel positions that read inside the image for no output pixel: their weight gradient is zero.
    let unreachedTaps: [Int]

    struct Tap {
        /// Position in the kernel, kh · k + kw: the weight block's column offset is `index · Cin`.
        let index: Int
        /// Within one image: the output pixels that read inside it, and the input pixel each reads.
        let outputPixels: [Int32], inputPixels: [Int32]
        /// Every output pixel reads the input pixel of the same index (the centre of a stride-1 kernel):
        /// the activation itself is this tap's gathered matrix.
        let isIdentity: Bool
        /// Where this tap's rows start in the gathered buffer, per image (identity taps take none).
        let offset: Int
        var count: Int { outputPixels.count }
    }

    init(_ shape: ConvShape, inputHeight height: Int, width: Int) {
        self.shape = shape
        let outHeight = shape.outputSide(height), outWidth = shape.outputSide(width)
        inputHeight = height
        inputWidth = width
        inputArea = height * width
        outputArea = outHeight * outWidth
        var taps: [Tap] = [], offset = 0
        let top = shape.pads(height).before, left = shape.pads(width).before
        for index in 0..<(shape.kernel * shape.kernel) {
            let kh = index / shape.kernel, kw = index % shape.kernel
            var outputs: [Int32] = [], inputs: [Int32] = []
            for ho in 0..<outHeight {
                let hi = ho * shape.stride - top + kh
                guard hi >= 0, hi < height else { continue }
                for wo in 0..<outWidth {
                    let wi = wo * shape.stride - left + kw
                    guard wi >= 0, wi < width else { continue }
                    outputs.append(Int32(ho * outWidth + wo))
                    inputs.append(Int32(hi * width + wi))
                }
            }
            guard !outputs.isEmpty else { continue }
            let identity = outputs.count == outputArea && inputArea == outputArea && outputs == inputs
            taps.append(Tap(index: index, outputPixels: outputs, inputPixels: inputs, isIdentity: identity,
                            offset: identity ? 0 : offset))
            if !identity { offset += outputs.count }
        }
        // A tap that covers every output pixel (the centre, for ResNet's convolutions) goes first and
        // writes the output directly; the others add onto it.
        self.taps = taps.sorted { ($0.count, $0.isIdentity ? 1 : 0) > ($1.count, $1.isIdentity ? 1 : 0) }
        firstTapCoversAll = self.taps.first?.count == outputArea
        gatheredRowsPerImage = offset
        unreachedTaps = (0..<(shape.kernel * shape.kernel)).filter { index in !taps.contains { $0.index == index } }
    }

    /// The share of im2col's (pixel, tap) products that read inside the image: rows and columns independently.
    static func usefulFraction(_ s: ConvShape, input g: Geometry) -> Double {
        func along(_ side: Int) -> Double {
            let outputs = s.outputSide(side), before = s.pads(side).before
            var valid = 0
            for o in 0..<outputs {
                for k in 0..<s.kernel where (0..<side).contains(o * s.stride - before + k) { valid += 1 }
            }
            return Double(valid) / Double(outputs * s.kernel)
        }
        return along(g.height) * along(g.width)
    }

    /// Whether taps beat im2col for a convolution on images of this size (a 1x1 convolution has no padding to
    /// skip: its useful fraction is 1).
    static func pays(_ s: ConvShape, input g: Geometry) -> Bool {
        usefulFraction(s, input: g) <= EngineTuning.maximumTapUsefulFraction
    }

    /// Floats of `gather`'s buffer for `images` images.
    func gatheredFloats(images: Int) -> Int { gatheredRowsPerImage * images * shape.inChannels }

    /// Floats of scratch for one tap's products over `images` images and `columns` channels (any tap but an
    /// identity one may need it).
    func productFloats(images: Int, columns: Int) -> Int {
        (taps.filter { !$0.isIdentity }.map(\.count).max() ?? 0) * images * columns
    }

    /// Copies, for the taps `tapRange` (indices into `taps`), the input rows their pixels read into
    /// `gathered` [rows, Cin], tap by tap, image by image.
    func gather(_ input: UnsafePointer<Float>, images: Int, into gathered: UnsafeMutablePointer<Float>,
                taps tapRange: Range<Int>? = nil) {
        gatherRows(input, at: \.inputPixels, area: inputArea, channels: shape.inChannels, images: images,
                   into: gathered, taps: tapRange ?? taps.indices)
    }

    /// Copies, for the taps `tapRange`, the rows of dY [N·Ho·Wo, Cout] at their pixels into `rows`, laid out
    /// like the gathered input (the identity tap reads dY itself).
    func gatherOutputRows(_ dy: UnsafePointer<Float>, images: Int, into rows: UnsafeMutablePointer<Float>,
                          taps tapRange: Range<Int>? = nil) {
        gatherRows(dy, at: \.outputPixels, area: outputArea, channels: shape.outChannels, images: images,
                   into: rows, taps: tapRange ?? taps.indices)
    }

    /// The rows of `source` ([N·area, channels]) at each tap's `pixels`, tap block by tap block, image by image.
    private func gatherRows(_ source: UnsafePointer<Float>, at pixels: KeyPath<Tap, [Int32]>, area: Int, channels: Int,
                            images: Int, into rows: UnsafeMutablePointer<Float>, taps tapRange: Range<Int>) {
        for tap in taps[tapRange] where !tap.isIdentity {
            let block = rows + tap.offset * images * channels
            tap[keyPath: pixels].withUnsafeBufferPointer { pixels in
                for n in 0..<images {
                    let src = source + n * area * channels, dst = block + n * tap.count * channels
                    for (j, pixel) in pixels.enumerated() {
                        (dst + j * channels).update(from: src + Int(pixel) * channels, count: channels)
                    }
                }
            }
        }
    }

    /// The adjoint of `gatherRows` for one tap, adding: destination row (image n, pixels[j]) += products row.
    private func scatterAdd(_ products: UnsafePointer<Float>, _ tap: Tap, at pixels: KeyPath<Tap, [Int32]>, area: Int,
                            images: Int, width: Int, into destination: UnsafeMutablePointer<Float>, stride: Int) {
        tap[keyPath: pixels].withUnsafeBufferPointer { pixels in
            for n in 0..<images {
                for (j, pixel) in pixels.enumerated() {
                    addRow(destination + (n * area + Int(pixel)) * stride, products + (n * tap.count + j) * width, width)
                }
            }
        }
    }

    /// output[:, columns] = conv(input) for `images` images, from `gather`'s buffer; `products` holds
    /// `productFloats(images:columns:)` floats. Output rows have `outputStride` floats.
    func multiply(_ input: UnsafePointer<Float>, gathered: UnsafePointer<Float>, images: Int,
                  weight: UnsafePointer<Float>, columns: Range<Int>, output: UnsafeMutablePointer<Float>,
                  outputStride: Int, products: UnsafeMutablePointer<Float>) {
        let cin = shape.inChannels, patch = shape.patchSize, width = columns.count
        let w = weight + columns.lowerBound * patch
        let out = output + columns.lowerBound
        if !firstTapCoversAll {
            for row in 0..<(images * outputArea) { (out + row * outputStride).update(repeating: 0, count: width) }
        }
        for (position, tap) in taps.enumerated() {
            let rows = tap.count * images
            let a = tap.isIdentity ? input : gathered + tap.offset * images * cin
            if position == 0 && firstTapCoversAll {
                // Covers every output pixel, in order: straight into the output.
                gemmABt(rows, width, cin, a, cin, w + tap.index * cin, patch, out, outputStride)
                continue
            }
            gemmABt(rows, width, cin, a, cin, w + tap.index * cin, patch, products, width)
            scatterAdd(products, tap, at: \.outputPixels, area: outputArea, images: images, width: width,
                       into: out, stride: outputStride)
        }
    }

    /// dW[outputs, :] (patch-major [Cout, patch]) = Σ over pixels dY ⊗ input, tap block by tap block, for the
    /// output channels `outputs`; blocks of taps that never reach inside the image are zero.
    func weightGradient(input: UnsafePointer<Float>, gathered: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                        dyRows: UnsafePointer<Float>, images: Int, outputs: Range<Int>, dW: UnsafeMutablePointer<Float>) {
        let cin = shape.inChannels, cout = shape.outChannels, patch = shape.patchSize
        let dWRows = dW + outputs.lowerBound * patch
        for index in unreachedTaps {
            for o in 0..<outputs.count { (dWRows + o * patch + index * cin).update(repeating: 0, count: cin) }
        }
        for tap in taps {
            let rows = tap.count * images
            let a = (tap.isIdentity ? dy : dyRows + tap.offset * images * cout) + outputs.lowerBound
            let b = tap.isIdentity ? input : gathered + tap.offset * images * cin
            gemmAtB(outputs.count, cin, rows, a, cout, b, cin, dWRows + tap.index * cin, patch)
        }
    }

    /// dx[:, inputs] += the input gradient, for the input channels `inputs`: tap by tap, dY_t · W_t added onto
    /// the input rows tap t read (dx starts zeroed, as for col2im). `products` holds
    /// `productFloats(images:columns: inputs.count)` floats.
    func addInputGradient(dy: UnsafePointer<Float>, dyRows: UnsafePointer<Float>, images: Int,
                          weight: UnsafePointer<Float>, inputs: Range<Int>, dx: UnsafeMutablePointer<Float>,
                          products: UnsafeMutablePointer<Float>) {
        let cin = shape.inChannels, cout = shape.outChannels, patch = shape.patchSize, width = inputs.count
        let dxColumns = dx + inputs.lowerBound
        for tap in taps {
            let rows = tap.count * images
            let w = weight + tap.index * cin + inputs.lowerBound
            if tap.isIdentity {
                gemmAB(rows, width, cout, dy, cout, w, patch, dxColumns, cin, beta: 1)
                continue
            }
            gemmAB(rows, width, cout, dyRows + tap.offset * images * cout, cout, w, patch, products, width)
            scatterAdd(products, tap, at: \.inputPixels, area: inputArea, images: images, width: width,
                       into: dxColumns, stride: cin)
        }
    }
}

/// dst[0..<count] += src[0..<count].
@inline(__always)
private func addRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    var i = 0
    while i + 8 <= count {
        dst.store(dst.vector(i) + src.vector(i), at: i)
        i += 8
    }
    while i < count { dst[i] += src[i]; i += 1 }
}
