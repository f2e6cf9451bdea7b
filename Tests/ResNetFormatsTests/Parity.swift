/// max |a − b| / max |b|, the relative error the issues' tolerances refer to; infinite when the counts differ or
/// either side holds NaN or infinities, so a broken result can never pass a tolerance.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    guard a.count == b.count, (a + b).allSatisfy(\.isFinite) else { return .infinity }
    var diff: Float = 0, scale: Float = 0
    for i in 0..<a.count {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / max(scale, .leastNormalMagnitude)
}
