import Dispatch
import Foundation
@testable import ResNetModel
import XCTest

/// The engine's parts against a direct convolution written out loop by loop (accumulated in Double), on small
/// odd shapes where every border case of im2col, Winograd's tiles and the taps shows up; and the lane hand-off.
final class ConvolutionEngineTests: XCTestCase {
    struct Case {
        var shape: ConvShape
        var geometry: Geometry
    }

    /// Shapes of ResNet-18's kinds (3x3 stride 1 and 2, the 7x7 stem, 1x1 stride 2 and 1) at odd sizes.
    let cases = [
        Case(shape: ConvShape(4, 8, kernel: 3, stride: 1, padding: 1), geometry: Geometry(batch: 3, height: 7, width: 5)),
        Case(shape: ConvShape(8, 4, kernel: 3, stride: 1, padding: 1), geometry: Geometry(batch: 2, height: 3, width: 3)),
        Case(shape: ConvShape(4, 8, kernel: 3, stride: 2, padding: 1), geometry: Geometry(batch: 3, height: 9, width: 6)),
        Case(shape: ConvShape(3, 8, kernel: 7, stride: 2, padding: 3), geometry: Geometry(batch: 2, height: 11, width: 9)),
        Case(shape: ConvShape(4, 8, kernel: 1, stride: 2, padding: 0), geometry: Geometry(batch: 3, height: 7, width: 5)),
        Case(shape: ConvShape(6, 5, kernel: 1, stride: 1, padding: 0), geometry: Geometry(batch: 2, height: 5, width: 4)),
        // TensorFlow's 'same' at stride 2: one pixel more after than before on even sides, symmetric on odd ones.
        Case(shape: ConvShape(4, 8, kernel: 3, stride: 2, padding: 1, samePadding: true), geometry: Geometry(batch: 2, height: 8, width: 7)),
        Case(shape: ConvShape(3, 4, kernel: 7, stride: 2, padding: 3, samePadding: true), geometry: Geometry(batch: 2, height: 10, width: 9)),
        Case(shape: ConvShape(4, 8, kernel: 3, stride: 1, padding: 1, samePadding: true), geometry: Geometry(batch: 2, height: 6, width: 5)),
    ]

    func testSamePaddingFollowsTensorFlow() {
        let s = ConvShape(1, 1, kernel: 3, stride: 2, padding: 1, samePadding: true)
        XCTAssertTrue(s.pads(96) == (0, 1) && s.outputSide(96) == 48)
        XCTAssertTrue(s.pads(49) == (1, 1) && s.outputSide(49) == 25)
        let stem = ConvShape(3, 1, kernel: 7, stride: 2, padding: 3, samePadding: true)
        XCTAssertTrue(stem.pads(96) == (2, 3) && stem.outputSide(96) == 48)
        XCTAssertTrue(stem.pads(49) == (3, 3) && stem.outputSide(49) == 25)
        let pointwise = ConvShape(1, 1, kernel: 1, stride: 2, padding: 0, samePadding: true)
        XCTAssertTrue(pointwise.pads(24) == (0, 0) && pointwise.outputSide(24) == 12)
        XCTAssertTrue(ConvShape(1, 1, kernel: 3, stride: 2, padding: 1).pads(96) == (1, 1))
    }

    /// The max pool with TensorFlow's padding: the window of the last output reaches past the bottom edge only.
    func testSamePaddedMaxPoolMatchesDirectMaximum() {
        let pool = ConvShape(2, 2, kernel: 3, stride: 2, padding: 1, samePadding: true)
        let g = Geometry(batch: 1, height: 6, width: 5)
        var rng = SplitMix64(seed: 3)
        let x = random(g.pixels * 2, &rng)
        var y = [Float](repeating: .nan, count: 3 * 3 * 2)
        let out = x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { maxPool(pool, xp.baseAddress!, g, channels: 2, $0.baseAddress!) }
        }
        XCTAssertEqual(out, Geometry(batch: 1, height: 3, width: 3))
        for oy in 0..<3 {
            for ox in 0..<3 {
                for c in 0..<2 {
                    // Height 6: pads (0, 1); width 5: pads (1, 1).
                    var best = -Float.infinity
                    for iy in (oy * 2)...(oy * 2 + 2) where iy < 6 {
                        for ix in (ox * 2 - 1)...(ox * 2 + 1) where ix >= 0 && ix < 5 { best = max(best, x[(iy * 5 + ix) * 2 + c]) }
                    }
                    XCTAssertEqual(y[(oy * 3 + ox) * 2 + c], best)
                }
            }
        }
    }

    func random(_ count: Int, _ rng: inout SplitMix64) -> [Float] { (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 } }

    /// out[n, ho, wo, o] = Σ w[o, i, kh, kw] · x[n, ho·s − p + kh, wo·s − p + kw, i]; weight torchvision layout.
    func direct(_ s: ConvShape, _ x: [Float], _ g: Geometry, _ w: [Float]) -> [Double] {
        let out = g.output(of: s), k = s.kernel, top = s.pads(g.height).before, left = s.pads(g.width).before
        var y = [Double](repeating: 0, count: out.pixels * s.outChannels)
        for n in 0..<g.batch {
            for ho in 0..<out.height {
                for wo in 0..<out.width {
                    for o in 0..<s.outChannels {
                        var sum = 0.0
                        for kh in 0..<k {
                            let hi = ho * s.stride - top + kh
                            guard hi >= 0, hi < g.height else { continue }
                            for kw in 0..<k {
                                let wi = wo * s.stride - left + kw
                                guard wi >= 0, wi < g.width else { continue }
                                for i in 0..<s.inChannels {
                                    sum += Double(w[((o * s.inChannels + i) * k + kh) * k + kw])
                                        * Double(x[((n * g.height + hi) * g.width + wi) * s.inChannels + i])
                                }
                            }
                        }
                        y[((n * out.height + ho) * out.width + wo) * s.outChannels + o] = sum
                    }
                }
            }
        }
        return y
    }

    /// max |a − b| / max |b|.
    func error(_ a: [Float], _ b: [Double]) -> Double {
        let scale = b.map(abs).max() ?? 1
        return zip(a, b).map { abs(Double($0) - $1) }.max()! / max(scale, 1e-30)
    }

    var splits: [(String, WorkSplit)] { [("one lane", .caller(threads: 1)), ("lane threads 2", .caller(threads: 2)), ("split", .lanes)] }

    /// Forward with the fused epilogue (bias, residual, ReLU) for every method that applies, every split.
    func testForwardMatchesDirectConvolution() {
        var rng = SplitMix64(seed: 11)
        var checked: Set<String> = []
        for c in cases {
            let s = c.shape, g = c.geometry, out = g.output(of: s)
            let x = random(g.pixels * s.inChannels, &rng), w = random(s.outChannels * s.patchSize, &rng)
            let bias = random(s.outChannels, &rng), residual = random(out.pixels * s.outChannels, &rng)
            let plain = direct(s, x, g, w)
            let expected = plain.indices.map { max(0, plain[$0] + Double(bias[$0 % s.outChannels]) + Double(residual[$0])) }
            let conv = Convolution(s, patchMajorWeight: patchMajorWeight(w, s), bias: bias)
            for algorithm in ConvolutionAlgorithm.allCases {
                let method = conv.method(g, laneImages: g.batch, algorithm: algorithm)
                for (name, split) in splits {
                    conv.prepare(method, g)
                    var y = [Float](repeating: .nan, count: out.pixels * s.outChannels)
                    let scratch = ConvolutionScratch()
                    scratch.budget = 64  // tiny: forces chunking
                    x.withUnsafeBufferPointer { xp in
                        residual.withUnsafeBufferPointer { rp in
                            y.withUnsafeMutableBufferPointer { yp in
                                conv.forward(xp.baseAddress!, g, yp.baseAddress!, method: method, residual: rp.baseAddress!,
                                             relu: true, split: split, scratch: scratch)
                            }
                        }
                    }
                    XCTAssertLessThan(error(y, expected), 1e-5, "\(s) on \(g), \(method), \(name)")
                    checked.insert("\(method)")
                }
            }
        }
        XCTAssertEqual(checked, ["pointwise", "winograd", "tapwise", "im2col"], "every method was exercised")
    }

    /// Backward: dW[o, i, kh, kw] = Σ dy[p, o] · x[p's input, i] and dx = the adjoint, for im2col, taps and 1x1.
    func testBackwardMatchesDirectGradients() {
        var rng = SplitMix64(seed: 12)
        for c in cases {
            let s = c.shape, g = c.geometry, out = g.output(of: s), k = s.kernel
            let top = s.pads(g.height).before, left = s.pads(g.width).before
            let x = random(g.pixels * s.inChannels, &rng), w = random(s.outChannels * s.patchSize, &rng)
            let dy = random(out.pixels * s.outChannels, &rng)
            // Direct gradients: dW by correlating dy with x, dx by scattering dy through w.
            var dW = [Double](repeating: 0, count: w.count), dx = [Double](repeating: 0, count: x.count)
            for n in 0..<g.batch {
                for ho in 0..<out.height {
                    for wo in 0..<out.width {
                        for kh in 0..<k {
                            let hi = ho * s.stride - top + kh
                            guard hi >= 0, hi < g.height else { continue }
                            for kw in 0..<k {
                                let wi = wo * s.stride - left + kw
                                guard wi >= 0, wi < g.width else { continue }
                                for o in 0..<s.outChannels {
                                    let d = Double(dy[((n * out.height + ho) * out.width + wo) * s.outChannels + o])
                                    for i in 0..<s.inChannels {
                                        let xi = ((n * g.height + hi) * g.width + wi) * s.inChannels + i
                                        let wIndex = ((o * s.inChannels + i) * k + kh) * k + kw
                                        dW[wIndex] += d * Double(x[xi])
                                        dx[xi] += d * Double(w[wIndex])
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for algorithm in [ConvolutionAlgorithm.im2col, .tapwise] {
                let parameter = TrainableParameter(name: "w", shape: s.weightShape, convShape: s, torchValues: w)
                let conv = Convolution(s, parameter: parameter)
                let scratch = ConvolutionScratch()
                scratch.budget = 100  // forces chunks of one image
                var gotDX = [Float](repeating: .nan, count: x.count)
                x.withUnsafeBufferPointer { xp in
                    dy.withUnsafeBufferPointer { dyp in
                        gotDX.withUnsafeMutableBufferPointer { dxp in
                            conv.backward(xp.baseAddress!, g, dyp.baseAddress!, weightGradient: parameter.gradient.baseAddress!,
                                          inputGradient: dxp.baseAddress!, algorithm: algorithm, scratch: scratch)
                        }
                    }
                }
                let method = conv.method(g, laneImages: g.batch, algorithm: algorithm, trainable: true)
                XCTAssertLessThan(error(parameter.gradients, dW), 1e-5, "dW \(s) on \(g), \(method)")
                XCTAssertLessThan(error(gotDX, dx), 1e-5, "dx \(s) on \(g), \(method)")
            }
        }
    }

    /// Many short hand-offs with random delays on either side: every lane runs exactly once per call, sees its
    /// own index, and the caller returns only after all have finished.
    func testLaneHandOffUnderStress() {
        let lanes = LaneThreads()
        var rng = SplitMix64(seed: 13)
        for round in 0..<3000 {
            let count = 2 + round % 3
            let delays = (0..<count).map { _ in rng.next() % 4 == 0 ? UInt32(rng.next() % 50) : 0 }
            let results = UnsafeMutableBufferPointer<Int>.allocate(capacity: count)
            results.initialize(repeating: -1)
            lanes.run(count) { lane in
                if delays[lane] > 0 { usleep(delays[lane]) }
                results[lane] = round * 10 + lane
            }
            XCTAssertEqual(Array(results), (0..<count).map { round * 10 + $0 }, "round \(round)")
            results.deallocate()
            if round % 500 == 0 { usleep(UInt32(rng.next() % 300)) }  // let the workers fall asleep now and then
        }
    }

    /// The lanes split a range into contiguous parts that cover it exactly once.
    func testTrainingLanesCoverEveryIndexOnce() {
        for count in [0, 1, 7, 64, 1000, 65_537] {
            let hits = UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(1, count))
            hits.initialize(repeating: 0)
            TrainingLanes.forEachRange(count, minimum: 3) { range in
                for i in range { hits[i] += 1 }
            }
            XCTAssertTrue(hits.prefix(count).allSatisfy { $0 == 1 }, "count \(count)")
            hits.deallocate()
        }
    }
}
