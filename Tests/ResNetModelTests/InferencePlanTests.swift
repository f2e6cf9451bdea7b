import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

final class InferencePlanTests: XCTestCase {
    func referenceLogits(side: Int, columnBudget: Int? = nil,
                         algorithm: ConvolutionAlgorithm = .automatic) throws -> (got: [Float], expected: [Float]) {
        let checkpoint = try Reference.checkpoint()
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        if let columnBudget { plan.columnBudget = columnBudget }
        plan.algorithm = algorithm
        let nchw = try Reference.floats("input_4x3x\(side)x\(side).f32")
        let input = nhwc(fromNCHW: nchw, batch: 4, channels: 3, height: side, width: side)
        return (plan.run(images: input, count: 4, height: side, width: side),
                try Reference.floats("logits_4x1000_from_\(side).f32"))
    }

    func testLogitsMatchPyTorchAt96() throws {
        let (got, expected) = try referenceLogits(side: 96)
        XCTAssertEqual(got.count, 4000)
        XCTAssertLessThan(relativeError(got, expected), 1e-5)
    }

    func testLogitsMatchPyTorchAt49() throws {
        let (got, expected) = try referenceLogits(side: 49)
        XCTAssertLessThan(relativeError(got, expected), 1e-5)
    }

    /// Winograd on every convolution it supports (layers 1–3; at 49x49 their sides 13 and 7 are odd, so
    /// tiles overhang the border), im2col everywhere and taps everywhere (the 7x7 stem and the stride-2
    /// convolutions included) all give PyTorch's logits.
    func testEachConvolutionAlgorithmMatchesPyTorch() throws {
        for algorithm in [ConvolutionAlgorithm.winograd, .im2col, .tapwise] {
            for side in [49, 96] {
                let (got, expected) = try referenceLogits(side: side, algorithm: algorithm)
                XCTAssertLessThan(relativeError(got, expected), 1e-5, "\(algorithm) at \(side)")
            }
        }
    }

    /// At the smallest input (32x32: layer4's maps are 1x1, only the centre tap reads inside) and at odd sizes,
    /// every algorithm gives what im2col gives (im2col itself is checked against PyTorch above).
    func testAlgorithmsAgreeAtSmallAndOddSizes() throws {
        let checkpoint = try Reference.checkpoint()
        for side in [32, 33, 35] {
            var rng = SplitMix64(seed: UInt64(side))
            let images = (0..<(3 * side * side * 3)).map { _ in rng.nextUnitFloat() }
            var results: [ConvolutionAlgorithm: [Float]] = [:]
            for algorithm in ConvolutionAlgorithm.allCases {
                let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
                plan.algorithm = algorithm
                results[algorithm] = plan.run(images: images, count: 3, height: side, width: side)
            }
            for algorithm in ConvolutionAlgorithm.allCases where algorithm != .im2col {
                XCTAssertLessThan(relativeError(results[algorithm]!, results[.im2col]!), 1e-5, "\(algorithm) at \(side)")
            }
        }
    }

    /// A tiny im2col budget forces many row chunks per convolution (and one image per tap-by-tap chunk);
    /// results must not change.
    func testChunkedColumnsGiveTheSameLogits() throws {
        for algorithm in [ConvolutionAlgorithm.im2col, .tapwise] {
            let (got, expected) = try referenceLogits(side: 49, columnBudget: 5_000, algorithm: algorithm)
            XCTAssertLessThan(relativeError(got, expected), 1e-5, "\(algorithm)")
        }
    }

    /// One image at a time, reusing the plan's buffers across batch sizes, gives PyTorch's logits.
    func testSingleImagesReuseBuffers() throws {
        let checkpoint = try Reference.checkpoint()
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        let nchw = try Reference.floats("input_4x3x96x96.f32")
        let expected = try Reference.floats("logits_4x1000_from_96.f32")
        let input = nhwc(fromNCHW: nchw, batch: 4, channels: 3, height: 96, width: 96)
        _ = plan.run(images: input, count: 4, height: 96, width: 96)
        for i in [3, 0] {
            let one = Array(input[(i * 96 * 96 * 3)..<((i + 1) * 96 * 96 * 3)])
            let got = plan.run(images: one, count: 1, height: 96, width: 96)
            XCTAssertLessThan(relativeError(got, Array(expected[(i * 1000)..<((i + 1) * 1000)])), 1e-5)
        }
    }

    /// Uneven lane splits (3 images over 2 lanes, 4 over 3) give PyTorch's logits, and OpenBLAS's thread
    /// count, lowered to 1 inside the lanes, is restored afterwards.
    func testBatchSplitAcrossLanesGivesPyTorchLogits() throws {
        let checkpoint = try Reference.checkpoint()
        let nchw = try Reference.floats("input_4x3x49x49.f32")
        let expected = try Reference.floats("logits_4x1000_from_49.f32")
        let input = nhwc(fromNCHW: nchw, batch: 4, channels: 3, height: 49, width: 49)
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        let blasThreads = BLASRuntime.threads
        for (lanes, count) in [(2, 3), (3, 4)] {
            Parallelism.threads = lanes
            let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
            let got = plan.run(images: Array(input[..<(count * 49 * 49 * 3)]), count: count, height: 49, width: 49)
            XCTAssertLessThan(relativeError(got, Array(expected[..<(count * 1000)])), 1e-5, "\(count) images over \(lanes) lanes")
            XCTAssertEqual(BLASRuntime.threads, blasThreads)
        }
    }

    func testRefusesStateDictOfAnotherShape() throws {
        var state = try Reference.checkpoint().state
        state["layer2.0.downsample.0.weight"] = Tensor(zeros: [128, 64, 3, 3])
        state["fc.extra"] = Tensor(zeros: [1])
        XCTAssertThrowsError(try InferencePlan(architecture: Architecture(ModelConfig()), state: state)) { error in
            XCTAssertEqual("\(error)", "layer2.0.downsample.0.weight: expected [128, 64, 1, 1], got [128, 64, 3, 3]; fc.extra: unexpected tensor")
        }
    }
}
