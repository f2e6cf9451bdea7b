/// dx = dy where the ReLU's output y is positive, else 0: the gradient through a ReLU, split across the lanes.
func reluGradient(_ dy: UnsafePointer<Float>, output y: UnsafePointer<Float>, count: Int, into dx: UnsafeMutablePointer<Float>) {
    TrainingLanes.forEachRange(count, minimum: EngineTuning.bulkFloatsPerPart) { range in
        forEachChunk(range) { i in
            dx.store(SIMD8<Float>.zero.replacing(with: dy.vector(i), where: y.vector(i) .> 0), at: i)
        } remainder: { i in
            dx[i] = y[i] > 0 ? dy[i] : 0
        }
    }
}

/// Runs `vector(j)` for each whole chunk of eight indices of `range` (eight channels of a row, say), then
/// `remainder(j)` for each index left over (the same arithmetic, one float at a time).
@inline(__always)
func forEachChunk(_ range: Range<Int>, _ vector: (Int) -> Void, remainder: (Int) -> Void) {
    var j = range.lowerBound
    while j + 8 <= range.upperBound { vector(j); j += 8 }
    while j < range.upperBound { remainder(j); j += 1 }
}

extension UnsafePointer<Float> {
    /// The eight floats from `i` on.
    @inline(__always) func vector(_ i: Int) -> SIMD8<Float> { UnsafeRawPointer(self + i).loadUnaligned(as: SIMD8<Float>.self) }
}

extension UnsafeMutablePointer<Float> {
    @inline(__always) func vector(_ i: Int) -> SIMD8<Float> { UnsafePointer(self).vector(i) }
    @inline(__always) func store(_ v: SIMD8<Float>, at i: Int) { UnsafeMutableRawPointer(self + i).storeBytes(of: v, as: SIMD8<Float>.self) }
}

extension SIMD8<Float> {
    /// max(0, x) lane by lane, as `Swift.max(0, x)` (`pointwiseMax` is not inlined: a call per chunk).
    @inline(__always) var clampedBelowAtZero: SIMD8<Float> { SIMD8<Float>.zero.replacing(with: self, where: self .>= 0) }
}
