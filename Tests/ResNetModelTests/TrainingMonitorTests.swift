import ResNetModel
import XCTest

final class TrainingMonitorTests: XCTestCase {
    func testBestIsOverTheRunAndStrictlyBetter() {
        var monitor = TrainingMonitor(figure: .validationLoss)
        XCTAssertTrue(monitor.record(0.9, phase: 1, epoch: 1))
        XCTAssertTrue(monitor.record(0.7, phase: 1, epoch: 2))
        XCTAssertFalse(monitor.record(0.7, phase: 1, epoch: 3), "a tie keeps the earlier epoch")
        XCTAssertFalse(monitor.record(.nan, phase: 1, epoch: 4), "NaN is never better")
        monitor.startPhase()
        XCTAssertFalse(monitor.record(0.8, phase: 2, epoch: 1), "the run's best stays phase 1's")
        XCTAssertEqual(monitor.best, 0.7)
        XCTAssertEqual(monitor.bestPhase, 1)
        XCTAssertEqual(monitor.bestEpoch, 2)

        var accuracy = TrainingMonitor(figure: .validationAccuracy)
        accuracy.record(0.5, phase: 1, epoch: 1)
        XCTAssertTrue(accuracy.record(0.6, phase: 1, epoch: 2), "higher is better for accuracy and AUC")
        XCTAssertFalse(accuracy.record(0.55, phase: 1, epoch: 3))
    }

    /// Patience counts epochs since the phase's own best; a new phase starts afresh.
    func testPatienceCountsWithinAPhase() {
        var monitor = TrainingMonitor(figure: .validationAUC)
        monitor.startPhase()
        for (epoch, value) in [0.6, 0.8, 0.7, 0.75].enumerated() { monitor.record(value, phase: 1, epoch: epoch + 1) }
        XCTAssertEqual(monitor.epochsWithoutImprovement, 2)
        XCTAssertTrue(monitor.shouldStop(patience: 2))
        XCTAssertFalse(monitor.shouldStop(patience: 3))
        XCTAssertFalse(monitor.shouldStop(patience: nil))
        monitor.markStopped(phase: 0)
        monitor.startPhase()
        XCTAssertEqual(monitor.epochsWithoutImprovement, 0)
        monitor.record(0.65, phase: 2, epoch: 1)
        XCTAssertEqual(monitor.epochsWithoutImprovement, 0, "phase 2's first epoch is its best so far")
        XCTAssertEqual(monitor.best, 0.8, "though not the run's")
        XCTAssertEqual(monitor.stoppedPhases, [0])
    }
}
