import Foundation

/// A bad combination of options that the argument parser cannot see: one line on stderr, exit status 1.
struct UsageError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Messages for people: progress and notes on stderr (silenced by --quiet), results on stdout.
enum Console {
    nonisolated(unsafe) static var quiet = false
    static let debugEnabled = ProcessInfo.processInfo.environment["RESNETKIT_LOG"] == "debug"

    /// A note about progress or what was done (stderr; hidden by --quiet).
    static func info(_ message: String) {
        guard !quiet else { return }
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    /// Diagnostics shown with RESNETKIT_LOG=debug.
    static func debug(_ message: String) {
        guard debugEnabled else { return }
        FileHandle.standardError.write(Data(("debug: " + message + "\n").utf8))
    }

    /// A warning, shown even with --quiet.
    static func warning(_ message: String) {
        FileHandle.standardError.write(Data(("warning: " + message + "\n").utf8))
    }

    /// 11689512 → "11,689,512" (counts are never negative).
    static func grouped(_ n: Int) -> String {
        let digits = String(n)
        var out = ""
        for (i, ch) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(ch)
        }
        return out
    }

    /// Whether stderr is a terminal (progress bars are drawn only then).
    static var stderrIsTerminal: Bool { isatty(2) == 1 }
}
