import Foundation

/// The hand-off between a loader's producer thread and its consumer: at most `depth` batches wait, so memory is
/// bounded whatever the input's size. `cancel()` drops what waits and stops the producer at its next push.
final class BatchQueue<Batch>: @unchecked Sendable {
    private let depth: Int
    private let condition = NSCondition()
    private var queue: [Batch] = []
    private var finished = false
    private var cancelled = false

    init(depth: Int) {
        precondition(depth > 0)
        self.depth = depth
    }

    /// The next batch, waiting for the producer; nil once it has finished and nothing is left (or on cancel).
    func next() -> Batch? {
        condition.lock()
        defer { condition.unlock() }
        while queue.isEmpty && !finished { condition.wait() }
        guard !queue.isEmpty else { return nil }
        let batch = queue.removeFirst()
        condition.broadcast()
        return batch
    }

    /// Waits for room, then queues the batch (dropped when the consumer has cancelled).
    func push(_ batch: Batch) {
        condition.lock()
        while queue.count >= depth && !cancelled { condition.wait() }
        if !cancelled { queue.append(batch) }
        condition.broadcast()
        condition.unlock()
    }

    /// The producer is done: `next()` returns what is left, then nil.
    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    func cancel() {
        condition.lock()
        cancelled = true
        queue.removeAll()
        condition.broadcast()
        condition.unlock()
    }

    var isCancelled: Bool {
        condition.lock()
        defer { condition.unlock() }
        return cancelled
    }
}
