import Dispatch
import Glibc
import Synchronization

/// Persistent threads that run the lanes of a batch side by side: `run(count) { lane in … }` runs lane 0 on
/// the calling thread and lane i on worker i, and returns when all are done.
///
/// Why not Dispatch's pool: a data loader may be keeping its few threads busy, and a lane waiting for a pool
/// slot runs after the others instead of beside them. Why persistent: OpenBLAS keeps per-thread buffers, so
/// a fresh thread per batch would fault its buffers in again every time.
public final class LaneThreads {
    private final class Worker {
        let index: Int
        /// Jobs posted by the caller and finished by the worker, counted.
        let posted = Handoff(), finished = Handoff()
        /// The caller's count of posted jobs.
        var jobs = 0
        var job: ((Int) -> Void)?
        var thread = pthread_t()

        init(index: Int) { self.index = index }

        func loop() {
            var done = 0
            while true {
                posted.wait(until: done + 1)
                guard runJob() else { return }  // no job: shut down
                done += 1
                finished.post(done)
            }
        }

        /// Its own function so that the job's last reference here is gone before `finished` is posted.
        private func runJob() -> Bool {
            guard let job else { return false }
            job(index)
            return true
        }
    }

    private var workers: [Worker] = []

    public init() {}

    /// Runs `body(lane)` for every lane in `0..<count` at once.
    public func run(_ count: Int, _ body: (Int) -> Void) {
        guard count > 1 else { body(0); return }
        while workers.count < count - 1 && spawn() {}
        let helpers = min(count - 1, workers.count)
        withoutActuallyEscaping(body) { body in
            for worker in workers.prefix(helpers) {
                worker.job = body
                worker.jobs += 1
                worker.posted.post(worker.jobs)
            }
            body(0)
            for lane in (helpers + 1)..<count { body(lane) }  // only if threads could not be created
            for worker in workers.prefix(helpers) {
                worker.finished.wait(until: worker.jobs)
                worker.job = nil
            }
        }
    }

    /// Starts one more worker; false if the system refuses a thread.
    private func spawn() -> Bool {
        let worker = Worker(index: workers.count + 1)
        let context = Unmanaged.passRetained(worker).toOpaque()
        let status = pthread_create(&worker.thread, nil, { raw in
            Unmanaged<Worker>.fromOpaque(raw!).takeRetainedValue().loop()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<Worker>.fromOpaque(context).release()
            return false
        }
        workers.append(worker)
        return true
    }

    deinit {
        for worker in workers {
            worker.job = nil
            worker.jobs += 1
            worker.posted.post(worker.jobs)
            pthread_join(worker.thread, nil)
        }
    }
}

/// A count that one thread raises and another waits on. The waiter spins for a while before it sleeps: waking
/// a sleeping thread costs far more than a spin, and training hands work to a lane hundreds of times a step,
/// each time for well under a millisecond.
final class Handoff: Sendable {
    private let count = Atomic<Int>(0)
    private let sleeping = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)

    func post(_ value: Int) {
        count.store(value, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) { wake.signal() }
    }

    /// Returns once the count has reached `value`.
    func wait(until value: Int) {
        var deadline: UInt64 = 0, spins = 0
        while count.load(ordering: .acquiring) < value {
            spins += 1
            guard spins % 1024 == 0 else { continue }
            sched_yield()  // a thread with work to do (another lane set's, a data loader's) goes first
            let now = DispatchTime.now().uptimeNanoseconds
            if deadline == 0 { deadline = now + EngineTuning.laneSpinNanoseconds }
            guard now >= deadline else { continue }
            // Sleep. The poster stores the count, then reads `sleeping`; this side stores `sleeping`, then reads
            // the count: in that order one of the two sees the other, so a post is never missed. A wake-up left
            // over from an earlier post only costs one more turn of the loop.
            sleeping.store(true, ordering: .sequentiallyConsistent)
            if count.load(ordering: .sequentiallyConsistent) < value { wake.wait() }
            sleeping.store(false, ordering: .sequentiallyConsistent)
            deadline = 0
        }
    }
}
