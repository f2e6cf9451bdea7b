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
