import Dispatch
import Glibc

/// Persistent threads that run the lanes of a batch side by side: `run(count) { lane in … }` runs lane 0 on
/// the calling thread and lane i on worker i, and returns when all are done.
///
/// Why not Dispatch's pool: a data loader may be keeping its few threads busy, and a lane waiting for a pool
/// slot runs after the others instead of beside them. Why persistent: OpenBLAS keeps per-thread buffers, so
/// a fresh thread per batch would fault its buffers in again every time.
final class LaneThreads {
    private final class Worker {
        let index: Int
        let start = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        var job: ((Int) -> Void)?
        var thread = pthread_t()

        init(index: Int) { self.index = index }

        func loop() {
            while true {
                start.wait()
                guard runJob() else { return }  // no job: shut down
                done.signal()
            }
        }

        /// Its own function so that the job's last reference here is gone before `done` is signalled.
        private func runJob() -> Bool {
            guard let job else { return false }
            job(index)
            return true
        }
    }

    private var workers: [Worker] = []

    /// Runs `body(lane)` for every lane in `0..<count` at once.
    func run(_ count: Int, _ body: (Int) -> Void) {
        guard count > 1 else { body(0); return }
        while workers.count < count - 1 && spawn() {}
        let helpers = min(count - 1, workers.count)
        withoutActuallyEscaping(body) { body in
            for worker in workers.prefix(helpers) {
                worker.job = body
                worker.start.signal()
            }
            body(0)
            for lane in (helpers + 1)..<count { body(lane) }  // only if threads could not be created
            for worker in workers.prefix(helpers) {
                worker.done.wait()
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
            worker.start.signal()
            pthread_join(worker.thread, nil)
        }
    }
}
