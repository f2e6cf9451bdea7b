import Foundation

/// A problem with a file the user handed over: printed as one line, `path: what is wrong`.
public struct FileError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var problem: String
    public init(_ path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }
    public var description: String { "\(path): \(problem)" }
}

/// The C library's message for the current `errno`.
public func systemErrorMessage(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
