/// Inverted dropout: kept values scaled by 1/(1−p) in training, identity otherwise (and when p = 0).
final class DropoutLayer {
    let probability: Float
    let output = FloatBuffer(), inputGradient = FloatBuffer(), mask = FloatBuffer()
    private var active = false
    private var count = 0

    init(probability: Float) { self.probability = probability }

    func forward(_ x: UnsafePointer<Float>, count: Int, training: Bool, rng: inout SplitMix64) -> UnsafePointer<Float> {
        active = training && probability > 0
        self.count = count
        guard active else { return x }
        let m = mask.reserve(count), y = output.reserve(count)
        let keep = 1 / (1 - probability)
        for i in 0..<count {
            m[i] = rng.nextUnitFloat() < probability ? 0 : keep
            y[i] = x[i] * m[i]
        }
        return UnsafePointer(y)
    }

    func backward(_ dy: UnsafePointer<Float>) -> UnsafePointer<Float> {
        guard active else { return dy }
        let dx = inputGradient.reserve(count), m = mask.pointer
        for i in 0..<count { dx[i] = dy[i] * m[i] }
        return UnsafePointer(dx)
    }
}
