import ResNetFormats
@testable import ResNetModel
import TestSupport
import XCTest

/// Grad-CAM's pieces on their own (the whole map is checked against PyTorch in CLITests/ExplainTests).
final class GradCAMTests: XCTestCase {
    /// ∂y_c/∂f through the MLP head (fc1 with BatchNorm folded, ReLU, fc2) against central differences: the head is
    /// piecewise linear, so a difference that crosses no ReLU kink is exact up to rounding.
    func testHeadGradientMatchesFiniteDifferences() throws {
        let checkpoint = try Checkpoint.load(path: TestPaths.fixtures.appendingPathComponent("default-model.safetensors").path)
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        let head = try XCTUnwrap(plan.head)
        XCTAssertEqual(head.layers.count, 2, "the fixture model has the MLP head")
        var random = SplitMix64(seed: 7)
        let features = (0..<plan.featureWidth).map { _ in random.nextUnitFloat() * 2 }
        for c in 0..<plan.numClasses {
            let (logits, gradient) = head.gradient(features: features, classIndex: c)
            XCTAssertEqual(logits.count, 2)
            let h: Float = 1e-3
            var worst: Float = 0, scale: Float = 0
            for k in 0..<plan.featureWidth {
                var up = features, down = features
                up[k] += h
                down[k] -= h
                let numeric = (head.gradient(features: up, classIndex: c).logits[c]
                               - head.gradient(features: down, classIndex: c).logits[c]) / (2 * h)
                worst = max(worst, abs(numeric - gradient[k]))
                scale = max(scale, abs(gradient[k]))
            }
            XCTAssertGreaterThan(scale, 0.01, "a gradient that is not zero")
            XCTAssertLessThan(worst / scale, 5e-3, "class \(c)")
        }
    }

    /// PyTorch: F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode="bilinear", align_corners=False).
    func testUpsampleHasPyTorchsHalfPixelCentres() {
        let out = GradCAM.upsample([0, 1, 2, 3], height: 2, width: 2, toHeight: 4, toWidth: 4)
        XCTAssertEqual(out, [0, 0.25, 0.75, 1, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2, 2.25, 2.75, 3])
        // 3 → 2 shrinks: sources at 0.25 and 1.75.
        XCTAssertEqual(GradCAM.upsample([0, 4, 8], height: 1, width: 3, toHeight: 1, toWidth: 2), [1, 7])
    }

    func testCAMIsReLUOfTheWeightedSumDividedByItsMaximum() {
        // Two pixels, two channels; alpha = gradient / 2.
        let activation: [Float] = [1, 0, 0, 1]
        XCTAssertEqual(GradCAM.camFromGradient(activation, height: 1, width: 2, channels: 2, featureGradient: [4, -2]), [1, 0])
        XCTAssertEqual(GradCAM.camFromGradient(activation, height: 1, width: 2, channels: 2, featureGradient: [4, 2]), [1, 0.5])
        XCTAssertEqual(GradCAM.camFromGradient(activation, height: 1, width: 2, channels: 2, featureGradient: [-1, -1]), [0, 0])
    }
}
