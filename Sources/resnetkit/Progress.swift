import Foundation

/// A one-line progress display on stderr for long runs: count (of the total when known), rate, ETA,
/// failures. Drawn only when stderr is a terminal and --quiet is off; redrawn at most 5 times a second.
/// `setTotal` may be called from another thread (e.g. a background count of the work).
final class ProgressBar: @unchecked Sendable {
    let label: String
    let unit: String
    let enabled: Bool
    private let start = Date()
    private let lock = NSLock()
    private var total: Int?
    private var lastDraw = Date.distantPast

    init(label: String, unit: String = "images", enabled: Bool = !Console.quiet && Console.stderrIsTerminal) {
        self.label = label
        self.unit = unit
        self.enabled = enabled
    }

    /// Seconds since the bar was created.
    var elapsed: Double { Date().timeIntervalSince(start) }

    func setTotal(_ total: Int) {
        lock.lock()
        self.total = total
        lock.unlock()
    }

    /// Redraws when enough time has passed since the last drawing.
    func update(done: Int, failed: Int = 0) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.2 else { return }
        lastDraw = now
        lock.lock()
        let total = self.total
        lock.unlock()
        let seconds = elapsed
        let rate = seconds > 0 ? Double(done) / seconds : 0
        var line = "\(label): \(done)"
        if let total, total > 0 {
            let fraction = min(1, Double(done) / Double(total))
            let width = 24, filled = Int(fraction * Double(width))
            line = "\(label) [" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
                + "] \(done)/\(total)"
        }
        line += " \(unit)  " + String(format: "%.1f %@/s", rate, unit)
        if let total, rate > 0, total > done {
            line += "  ETA " + Self.duration(Double(total - done) / rate)
        }
        if failed > 0 { line += "  \(failed) failed" }
        FileHandle.standardError.write(Data(("\r\u{1B}[2K" + line).utf8))
    }

    /// Clears the bar's line (the caller prints its summary after).
    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8))
    }

    /// 75 → "1:15", 3700 → "1:01:40".
    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }
}
