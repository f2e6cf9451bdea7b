import CKernels
import ResNetModel
import XCTest

/// The C kernels against plain scalar Swift with the same operations: equal to the last bit, at lengths that
/// leave remainders after every vector width (the loader picks the AVX-512, AVX2 or baseline clone).
final class CKernelTests: XCTestCase {
    func randomFloats(_ count: Int, _ rng: inout SplitMix64, scale: Float = 1) -> [Float] {
        (0..<count).map { _ in (rng.nextUnitFloat() * 2 - 1) * scale }
    }

    func testAdamWMatchesScalarArithmetic() {
        var rng = SplitMix64(seed: 3)
        for count in [1, 15, 17, 1003] {
            var w = randomFloats(count, &rng), m = randomFloats(count, &rng, scale: 0.01)
            // Some second moments and gradients zero, where ε decides the step.
            var v = randomFloats(count, &rng).enumerated().map { $0.offset % 5 == 0 ? 0 : $0.element * $0.element * 1e-4 }
            let g = randomFloats(count, &rng, scale: 0.1).enumerated().map { $0.offset % 7 == 0 ? 0 : $0.element }
            let (decay, b2, ob1, ob2, step, c2, eps): (Float, Float, Float, Float, Float, Float, Float) =
                (0.9995, 0.999, 0.1, 0.001, 1.3e-3, 0.0447, 1e-8)
            var ew = w, em = m, ev = v
            for i in 0..<count {
                let wi = ew[i] * decay
                em[i] = em[i] + ob1 * (g[i] - em[i])
                ev[i] = ev[i] * b2 + ob2 * g[i] * g[i]
                let denom = ev[i].squareRoot() / c2 + eps
                ew[i] = wi - step * (em[i] / denom)
            }
            resnetkit_adamw(&w, g, &m, &v, count, decay, b2, ob1, ob2, step, c2, eps)
            XCTAssertEqual(w, ew, "weights, \(count)")
            XCTAssertEqual(m, em, "first moments, \(count)")
            XCTAssertEqual(v, ev, "second moments, \(count)")
        }
    }

    func testBatchNormKernelsMatchScalarArithmetic() {
        var rng = SplitMix64(seed: 4)
        for (rows, channels) in [(5, 3), (7, 17), (3, 40)] {
            let n = rows * channels
            let x = randomFloats(n, &rng), dy = randomFloats(n, &rng), residual = randomFloats(n, &rng)
            let mask = randomFloats(n, &rng)
            let mean = randomFloats(channels, &rng, scale: 0.1), invStd = randomFloats(channels, &rng).map { 1 + abs($0) }
            let scale = randomFloats(channels, &rng), shift = randomFloats(channels, &rng)
            let meanDy = randomFloats(channels, &rng, scale: 0.1), meanDyXhat = randomFloats(channels, &rng, scale: 0.1)

            var sum = [Double](repeating: 0.5, count: channels), squares = sum
            resnetkit_channel_moments(x, rows, channels, &sum, &squares)
            var expectedSum = [Double](repeating: 0.5, count: channels), expectedSquares = expectedSum
            for r in 0..<rows {
                for j in 0..<channels {
                    let v = Double(x[r * channels + j])
                    expectedSum[j] += v
                    expectedSquares[j] += v * v
                }
            }
            XCTAssertEqual(sum, expectedSum)
            XCTAssertEqual(squares, expectedSquares)

            for masked in [false, true] {
                func dyHat(_ i: Int) -> Float { masked ? (mask[i] > 0 ? dy[i] : 0) : dy[i] }
                func xhat(_ i: Int) -> Float { (x[i] - mean[i % channels]) * invStd[i % channels] }
                var sd = [Double](repeating: 0, count: channels), sdx = sd
                var dx = [Float](repeating: 0, count: n)
                mask.withUnsafeBufferPointer { maskPointer in
                    let m = masked ? maskPointer.baseAddress : nil
                    resnetkit_batchnorm_gradient_sums(dy, x, m, mean, invStd, rows, channels, &sd, &sdx)
                    resnetkit_batchnorm_input_gradient(dy, x, m, mean, invStd, scale, meanDy, meanDyXhat, rows, channels, &dx)
                }
                var esd = [Double](repeating: 0, count: channels), esdx = esd
                var edx = [Float](repeating: 0, count: n)
                for i in 0..<n {
                    let j = i % channels
                    esd[j] += Double(dyHat(i))
                    esdx[j] += Double(dyHat(i) * xhat(i))
                    edx[i] = scale[j] * (dyHat(i) - meanDy[j] - xhat(i) * meanDyXhat[j])
                }
                XCTAssertEqual(sd, esd, "Σ dŷ, masked \(masked)")
                XCTAssertEqual(sdx, esdx, "Σ dŷ·x̂, masked \(masked)")
                XCTAssertEqual(dx, edx, "dx, masked \(masked)")
            }

            for (withResidual, relu) in [(false, false), (true, true), (false, true)] {
                var y = [Float](repeating: 0, count: n)
                residual.withUnsafeBufferPointer { r in
                    resnetkit_batchnorm_apply(x, withResidual ? r.baseAddress : nil, scale, shift, rows, channels,
                                              relu ? 1 : 0, &y)
                }
                let expected = (0..<n).map { i -> Float in
                    var v = x[i] * scale[i % channels] + shift[i % channels]
                    if withResidual { v += residual[i] }
                    return relu ? (v >= 0 ? v : 0) : v
                }
                XCTAssertEqual(y, expected, "apply, residual \(withResidual), relu \(relu)")
            }
        }
    }
}
