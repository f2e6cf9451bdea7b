import ResNetFormats
import ResNetModel
import XCTest

final class InferencePlanTests: XCTestCase {
    func referenceLogits(side: Int) throws -> (got: [Float], expected: [Float]) {
        let checkpoint = try Reference.checkpoint()
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
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
}
