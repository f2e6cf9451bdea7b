import ResNetModel
import XCTest

final class LearningRateRangeTestTests: XCTestCase {
    func testScheduleIsExponentialFromStartToEnd() {
        let test = LearningRateRangeTest(startLR: 1e-7, endLR: 10, steps: 9)
        XCTAssertEqual(test.learningRate(at: 0), 1e-7, accuracy: 1e-20)
        XCTAssertEqual(test.learningRate(at: 8), 10, accuracy: 1e-12)
        XCTAssertEqual(test.learningRate(at: 4), 1e-3, accuracy: 1e-15, "the geometric middle")
    }

    /// fastai's smoothing: avg = β·avg + (1 − β)·loss, smoothed = avg / (1 − βᵗ).
    func testSmoothingHasBiasCorrection() {
        var test = LearningRateRangeTest(startLR: 1e-3, endLR: 1, steps: 10)
        test.record(loss: 1)
        test.record(loss: 2)
        test.record(loss: 3)
        XCTAssertEqual(test.smoothedLosses[0], 1, accuracy: 1e-12)
        XCTAssertEqual(test.smoothedLosses[1], (0.98 * 0.02 + 0.02 * 2) / (1 - 0.98 * 0.98), accuracy: 1e-12)
        let a3 = 0.98 * (0.98 * 0.02 + 0.02 * 2) + 0.02 * 3
        XCTAssertEqual(test.smoothedLosses[2], a3 / (1 - pow(0.98, 3)), accuracy: 1e-12)
        XCTAssertEqual(test.losses, [1, 2, 3])
    }

    func testStopsWhenTheSmoothedLossExceedsFourTimesItsMinimum() {
        var test = LearningRateRangeTest(startLR: 1e-3, endLR: 1, steps: 50, beta: 0)
        for loss in [2.0, 1.0, 0.5, 1.5, 2.1] {
            XCTAssertNotNil(test.nextLearningRate)
            test.record(loss: loss)
        }
        XCTAssertNil(test.nextLearningRate, "2.1 > 4 × 0.5")
        XCTAssertEqual(test.losses.count, 5)
        XCTAssertNotNil(test.stopReason)

        var diverging = LearningRateRangeTest(startLR: 1e-3, endLR: 1, steps: 50)
        diverging.record(loss: 1)
        diverging.record(loss: .nan)
        XCTAssertNil(diverging.nextLearningRate, "a NaN loss ends the test")
    }

    /// Without smoothing (β = 0), the steepest descent is where the loss drops most per unit of log(lr), and the
    /// minimum is the lowest loss; the first tenth and the last five points are left out.
    func testSuggestsSteepestDescentAndMinimumOverTen() {
        let losses: [Double] = [3, 3, 2.95, 2.9, 2.7, 1.5, 1.2, 1.0, 0.9, 0.85, 0.8, 0.9, 1.5, 0.1, 0.1, 0.1, 0.1, 0.1]
        var test = LearningRateRangeTest(startLR: 1e-6, endLR: 1, steps: 20, beta: 0, divergenceFactor: 1e9)
        for loss in losses { test.record(loss: loss) }
        let suggestion = test.suggestion()
        // Points 2…12 count (20 / 10 = 2 skipped at the start, 5 at the end): steepest from 4 to 5, lowest at 10.
        XCTAssertEqual(suggestion?.steepest ?? 0, test.learningRate(at: 4), accuracy: 1e-15)
        XCTAssertEqual(suggestion?.minimum ?? 0, test.learningRate(at: 10), accuracy: 1e-15)
        XCTAssertEqual(suggestion?.minimumOverTen ?? 0, test.learningRate(at: 10) / 10, accuracy: 1e-15)
    }
}
