import CDNNL
@testable import ResNetDNNL
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// bf16 and int8 on oneDNN against PyTorch's fp32 logits for torchvision's ResNet-18 (../shared/reference).
final class DNNLPlanTests: XCTestCase {
    static func reference(_ name: String) throws -> [Float] { try readFloats(TestPaths.reference.appendingPathComponent(name)) }
    static func checkpoint() throws -> Checkpoint {
        try Checkpoint.load(path: TestPaths.reference.appendingPathComponent("resnet18.safetensors").path)
    }
    static func input(_ side: Int) throws -> [Float] {
        nhwc(fromNCHW: try reference("input_4x3x\(side)x\(side).f32"), batch: 4, channels: 3, height: side, width: side)
    }

    static func argmaxes(_ logits: [Float], classes: Int) -> [Int] {
        stride(from: 0, to: logits.count, by: classes).map { start in
            (start..<start + classes).max { logits[$0] < logits[$1] }! - start
        }
    }

    func testBF16LogitsMatchPyTorch() throws {
        let checkpoint = try Self.checkpoint()
        let plan = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16)
        for side in [49, 96] {
            let got = try plan.run(images: try Self.input(side), count: 4, height: side, width: side)
            let expected = try Self.reference("logits_4x1000_from_\(side).f32")
            let error = relativeError(got, expected)
            XCTAssertLessThan(error, 2e-2, "bf16 at \(side)x\(side)")
            // bf16 is not fp32: an error this small would mean the fp32 path ran.
            XCTAssertGreaterThan(error, 1e-5, "bf16 at \(side)x\(side)")
            XCTAssertEqual(Self.argmaxes(got, classes: 1000), Self.argmaxes(expected, classes: 1000))
        }
    }

    /// bf16 Winograd and taps wherever they apply (Winograd: 3x3 stride-1 convolutions, odd maps with tiles past the
    /// edge at 49x49, residual and ReLU in the output transform, chunks of tiles; taps: maps of at most 9 output
    /// pixels that no window covers whole, stride 1 and 2) against PyTorch and the direct convolutions; and where
    /// they pay on this CPU, the same logits.
    func testWorkSavingLayersMatchPyTorchAndTheDirectConvolutions() throws {
        let checkpoint = try Self.checkpoint()
        let winograd = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16, workSaving: true)
        let direct = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16, workSaving: false)
        for side in [49, 96] {
            let lines = try winograd.implementations(batch: 4, height: side, width: side)
            // Winograd reads NHWC activations, which oneDNN keeps where it has native bf16 (elsewhere: blocked).
            if DNNLRuntime.atLeast(dnnl_cpu_isa_avx512_core_bf16) {
                XCTAssertEqual(lines.filter { $0.contains("as Winograd") }.count, 3, "\(lines)")
                // 49: layer4's 3x3/2 (4x4 → 2x2; its 3x3/1 on 2x2 are dense); 96: that one and the 3x3/1 on 3x3.
                XCTAssertEqual(lines.filter { $0.contains("by taps") }.count, side == 49 ? 1 : 2, "\(lines)")
            }
            XCTAssertFalse(try direct.implementations(batch: 4, height: side, width: side).contains { $0.contains("Winograd") || $0.contains("taps") })
            let images = try Self.input(side), expected = try Self.reference("logits_4x1000_from_\(side).f32")
            let got = try winograd.run(images: images, count: 4, height: side, width: side)
            let plain = try direct.run(images: images, count: 4, height: side, width: side)
            XCTAssertLessThan(relativeError(got, expected), 2e-2, "Winograd and taps at \(side)x\(side)")
            XCTAssertLessThan(relativeError(got, plain), 1.5e-2, "Winograd and taps against direct at \(side)x\(side)")
            XCTAssertEqual(Self.argmaxes(got, classes: 1000), Self.argmaxes(expected, classes: 1000))
            // One image alone (on one lane: other chunks) gives what it gave in the batch.
            let one = try winograd.run(images: Array(images[0..<side * side * 3]), count: 1, height: side, width: side)
            XCTAssertLessThan(relativeError(one, Array(got[0..<1000])), 1e-5)
            print("bf16 at \(side)x\(side): Winograd and taps \(relativeError(got, expected)), direct \(relativeError(plain, expected)) from PyTorch")
            let automatic = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16)
            let chosen = try automatic.run(images: images, count: 4, height: side, width: side)
            XCTAssertLessThan(relativeError(chosen, expected), 2e-2, "bf16 at \(side)x\(side), Winograd and taps where they pay")
        }
    }

    /// A batch of one and a batch of four in one plan (two sets of primitives) give the same first image.
    func testBatchShapesAgree() throws {
        let checkpoint = try Self.checkpoint()
        let plan = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16)
        let images = try Self.input(49)
        let four = try plan.run(images: images, count: 4, height: 49, width: 49)
        let one = try plan.run(images: Array(images[0..<49 * 49 * 3]), count: 1, height: 49, width: 49)
        XCTAssertLessThan(relativeError(one, Array(four[0..<1000])), 1e-5)
    }

    func testInt8LogitsMatchPyTorch() throws {
        let checkpoint = try Self.checkpoint()
        let fp32 = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        for side in [49, 96] {
            let images = try Self.input(side)
            let collector = RangeCollector(method: .max)
            images.withUnsafeBufferPointer { collector.add(fp32, images: $0, count: 4, height: side, width: side) }
            let scales = collector.scales(images: 4)
            XCTAssertEqual(scales.maxima.count, checkpoint.architecture.namedConvolutions.count)
            let plan = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .int8, scales: scales)
            let got = try plan.run(images: images, count: 4, height: side, width: side)
            let expected = try Self.reference("logits_4x1000_from_\(side).f32")
            let error = relativeError(got, expected)
            XCTAssertLessThan(error, 5e-2, "int8 at \(side)x\(side)")
            XCTAssertGreaterThan(error, 1e-4, "int8 at \(side)x\(side)")
        }
    }

    /// At 32x32 layer3 sees 2x2 and layer4 1x1: convolutions whose windows cover their input run as dense layers
    /// (layer4's 3x3/2 on 2x2 among them); bf16 and int8 against the fp32 engine (itself checked against PyTorch).
    func testDenseLayersMatchTheFP32Engine() throws {
        let checkpoint = try Self.checkpoint()
        let fp32 = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        // The reference images' top-left 32x32.
        let full = try Self.input(49)
        var images: [Float] = []
        for n in 0..<4 {
            for y in 0..<32 {
                let row = (n * 49 + y) * 49 * 3
                images += full[row..<row + 32 * 3]
            }
        }
        let expected = fp32.run(images: images, count: 4, height: 32, width: 32)
        let collector = RangeCollector(method: .max)
        images.withUnsafeBufferPointer { collector.add(fp32, images: $0, count: 4, height: 32, width: 32) }
        for (precision, tolerance) in [(Precision.bf16, Float(2e-2)), (.int8, 5e-2)] {
            let plan = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: precision,
                                    scales: collector.scales(images: 4))
            // Where bf16 is native, oneDNN keeps activations NHWC and the dense layers run; elsewhere (AVX-512
            // without AVX512_BF16) it picks blocked layouts and the plan keeps the convolutions.
            if DNNLRuntime.atLeast(dnnl_cpu_isa_avx512_core_bf16) {
                let lines = try plan.implementations(batch: 4, height: 32, width: 32)
                XCTAssertTrue(lines.contains { $0.hasPrefix("3x3/1 256→256 on 2x2 as dense: ") }, "\(lines)")
                XCTAssertTrue(lines.contains { $0.hasPrefix("3x3/2 256→512 on 2x2 as dense: ") }, "\(lines)")
                XCTAssertTrue(lines.contains { $0.hasPrefix("3x3/1 512→512 on 1x1 as dense: ") }, "\(lines)")
            }
            let got = try plan.run(images: images, count: 4, height: 32, width: 32)
            XCTAssertLessThan(relativeError(got, expected), tolerance, "\(precision)")
            // The same label wherever the top two logits are further apart than the tolerance allows to move
            // (image 0's two best classes are 1 % apart here).
            let scale = expected.map(abs).max()!
            for (n, (a, b)) in zip(Self.argmaxes(got, classes: 1000), Self.argmaxes(expected, classes: 1000)).enumerated() {
                let row = expected[(n * 1000)..<((n + 1) * 1000)].sorted(by: >)
                guard row[0] - row[1] > 2 * tolerance * scale else { continue }
                XCTAssertEqual(a, b, "\(precision), image \(n)")
            }
        }
    }

    /// Winograd and taps forced wherever they apply, on sizes whose maps are odd, non-square, 1x1 or 2x1 (tiles
    /// and windows past every edge), a batch of 3 (lanes of 1 and 2 images), against the fp32 engine.
    func testWorkSavingOnAwkwardSizesMatchesTheFP32Engine() throws {
        let checkpoint = try Self.checkpoint()
        let fp32 = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        let plan = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16, workSaving: true)
        var rng = SplitMix64(seed: 11)
        for (height, width) in [(32, 32), (33, 47), (77, 50), (40, 64)] {
            let images = (0..<(3 * height * width * 3)).map { _ in rng.nextUnitFloat() }
            let expected = fp32.run(images: images, count: 3, height: height, width: width)
            let got = try plan.run(images: images, count: 3, height: height, width: width)
            XCTAssertLessThan(relativeError(got, expected), 2e-2, "\(height)x\(width)")
        }
    }

    /// Which convolutions' windows cover their whole input, and the dense weights against a direct convolution.
    func testDenseFormOfAConvolution() {
        let same3x3s2 = ConvShape(3, 5, kernel: 3, stride: 2, padding: 0, samePadding: true)
        XCTAssertTrue(DNNLPlan.windowsCoverInput(ConvShape(4, 5, kernel: 3, stride: 1, padding: 1), (2, 2)))
        XCTAssertTrue(DNNLPlan.windowsCoverInput(ConvShape(4, 5, kernel: 3, stride: 1, padding: 1), (1, 2)))
        XCTAssertFalse(DNNLPlan.windowsCoverInput(ConvShape(4, 5, kernel: 3, stride: 1, padding: 1), (3, 3)))
        XCTAssertTrue(DNNLPlan.windowsCoverInput(ConvShape(4, 5, kernel: 3, stride: 2, padding: 1), (2, 2)))
        XCTAssertFalse(DNNLPlan.windowsCoverInput(ConvShape(4, 5, kernel: 3, stride: 2, padding: 1), (4, 4)))
        XCTAssertFalse(DNNLPlan.windowsCoverInput(ConvShape(4, 5, kernel: 1, stride: 2, padding: 0), (2, 2)))
        XCTAssertTrue(DNNLPlan.windowsCoverInput(same3x3s2, (2, 1)))
        XCTAssertFalse(DNNLPlan.windowsCoverInput(same3x3s2, (2, 3)))
        var random = SplitMix64(seed: 3)
        for (shape, side) in [(ConvShape(4, 5, kernel: 3, stride: 1, padding: 1), (2, 2)), (same3x3s2, (2, 1))] {
            let weight = (0..<shape.outChannels * shape.patchSize).map { _ in Float.random(in: -1...1, using: &random) }
            let layer = DNNLPlan.Layer(name: "c", shape: shape, weight: weight, bias: [], weightScales: nil)
            let dense = DNNLPlan.denseWeight(layer, side)
            let x = (0..<shape.inputs(side)).map { _ in Float.random(in: -1...1, using: &random) }  // NHWC, one image
            let out = (shape.outputSide(side.0), shape.outputSide(side.1))
            let (top, left) = (shape.pads(side.0).before, shape.pads(side.1).before)
            for oy in 0..<out.0 { for ox in 0..<out.1 { for o in 0..<shape.outChannels {
                var direct: Float = 0
                for ky in 0..<shape.kernel { for kx in 0..<shape.kernel {
                    let iy = oy * shape.stride - top + ky, ix = ox * shape.stride - left + kx
                    guard (0..<side.0).contains(iy), (0..<side.1).contains(ix) else { continue }
                    for i in 0..<shape.inChannels {
                        direct += weight[((o * shape.inChannels + i) * shape.kernel + ky) * shape.kernel + kx]
                            * x[(iy * side.1 + ix) * shape.inChannels + i]
                    }
                } }
                let row = ((oy * out.1 + ox) * shape.outChannels + o) * x.count
                let viaDense = (0..<x.count).reduce(Float(0)) { $0 + dense[row + $1] * x[$1] }
                XCTAssertEqual(viaDense, direct, accuracy: 1e-5, "\(shape) at \(side): (\(oy), \(ox), \(o))")
            } } }
        }
    }

    func testInt8WithoutScalesIsRefusedNamingQuantize() throws {
        let checkpoint = try Self.checkpoint()
        XCTAssertThrowsError(try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .int8)) { error in
            XCTAssertTrue("\(error)".contains("resnetkit quantize"), "\(error)")
        }
    }

    func testImplementationsAreNamed() throws {
        let checkpoint = try Self.checkpoint()
        let plan = try DNNLPlan(architecture: checkpoint.architecture, state: checkpoint.state, precision: .bf16)
        let lines = try plan.implementations(batch: 2, height: 49, width: 49)
        XCTAssertTrue(lines.contains { $0.hasPrefix("7x7/2 3→64: ") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("max pool: ") }, "\(lines)")
        XCTAssertFalse(lines.contains { $0.hasSuffix(": ?") }, "\(lines)")
    }

    /// max is the largest magnitude; percentile 99.99 of 1…100 000 (one outlier at −1e6) clips the outlier and
    /// lands within a histogram bin of 99 990.
    func testRangeMethods() {
        var values = (1...100_000).map { Float($0) }
        values[500] = -1_000_000
        values.withUnsafeBufferPointer { v in
            XCTAssertEqual(RangeCollector(method: .max).range(v), 1_000_000)
            let p = RangeCollector(method: .percentile(99.99)).range(v)
            XCTAssertEqual(p, 99_990, accuracy: 1_000_000 / 4096 + 1)
        }
    }

    func testScalesRoundTripThroughJSON() throws {
        let scales = ActivationScales(input: 2.5, maxima: ["bn1": 3, "layer1.0.bn1": 1.25], method: "max over 4 images")
        XCTAssertEqual(try ActivationScales(json: scales.json), scales)
        XCTAssertThrowsError(try ActivationScales(json: "{\"input\": 1}"))
    }
}
