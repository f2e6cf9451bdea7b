/// Max pool (the stem's 3x3/2 pad 1); forward records which tap of each window won, backward routes each
/// output gradient to that input.
final class MaxPoolLayer {
    let pool: ConvShape
    var channels: Int { pool.outChannels }
    let output = FloatBuffer(), inputGradient = FloatBuffer()
    private var window = UnsafeMutableBufferPointer<UInt8>(start: nil, count: 0)
    private var windowRecorded = false
    private var inputGeometry = Geometry(batch: 0, height: 0, width: 0)
    private var outputGeometry = Geometry(batch: 0, height: 0, width: 0)

    init(_ pool: ConvShape) { self.pool = pool }
    deinit { window.deallocate() }

    /// `recordWindow`: keep what backward needs (a forward whose backward stops before this layer need not).
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, recordWindow: Bool) -> (UnsafeMutablePointer<Float>, Geometry) {
        let out = Geometry(batch: g.batch, height: pool.outputSide(g.height), width: pool.outputSide(g.width))
        let count = out.pixels * channels
        if recordWindow && window.count < count {
            window.deallocate()
            window = .allocate(capacity: count)
        }
        let y = output.reserve(count)
        // Lanes split the batch by image.
        let inputImage = g.height * g.width * channels, outputImage = out.height * out.width * channels
        TrainingLanes.forEachRange(g.batch, minimum: 1) { images in
            let first = images.lowerBound
            maxPool(pool, x + first * inputImage, Geometry(batch: images.count, height: g.height, width: g.width),
                    channels: channels, y + first * outputImage,
                    window: recordWindow ? window.baseAddress! + first * outputImage : nil, threads: 1)
        }
        windowRecorded = recordWindow
        inputGeometry = g
        outputGeometry = out
        return (y, out)
    }

    /// dy [N·Ho·Wo, C] → dx [N·H·W, C]; threads split by image (a window stays in its image).
    func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        precondition(windowRecorded, "max pool backward after a forward that did not record its windows")
        let g = inputGeometry, out = outputGeometry, c = channels
        let k = pool.kernel, s = pool.stride, top = pool.pads(g.height).before, left = pool.pads(g.width).before
        let dx = inputGradient.reserve(g.pixels * c)
        dx.update(repeating: 0, count: g.pixels * c)
        // Offset of each tap from its window's top-left corner, in floats.
        let tapOffsets = (0..<(k * k)).map { (($0 / k) * g.width + $0 % k) * c }
        let perImage = out.height * out.width, taps = UnsafePointer(window.baseAddress!)
        tapOffsets.withUnsafeBufferPointer { tapOffsets in
            TrainingLanes.forEachRange(out.batch, minimum: 1) { range in
                for p in (range.lowerBound * perImage)..<(range.upperBound * perImage) {
                    let x = p % out.width, y = (p / out.width) % out.height, n = p / perImage
                    let corner = ((n * g.height + y * s - top) * g.width + x * s - left) * c
                    let grad = dy + p * c, tap = taps + p * c
                    for j in 0..<c { dx[corner + tapOffsets[Int(tap[j])] + j] += grad[j] }
                }
            }
        }
        return dx
    }
}
