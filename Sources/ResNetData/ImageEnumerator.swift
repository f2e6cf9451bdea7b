import Foundation

/// One image to process: where it is and the id it gets in the results.
public struct ImageEntry: Sendable, Equatable {
    public var path: String
    /// File name without extension; for recursive runs, the path relative to the folder given, without extension.
    public var id: String
    /// Set when the entry could not even be listed (an unreadable sub-folder): reported as a failure.
    public var problem: String?

    public init(path: String, id: String, problem: String? = nil) {
        self.path = path
        self.id = id
        self.problem = problem
    }
}

/// Lists the `.tif`/`.tiff` files (any case) under the paths given, lazily: a folder of a million files
/// yields its first entries after reading one chunk of the directory, never the whole listing.
///
/// Order: the paths in the order given; within a folder, `readdir` order sorted within chunks of
/// `chunkSize` entries (so folders of up to `chunkSize` files come out sorted by name), and with
/// `recursive`, sub-folders after the folder's own files, by name, depth first. The order is stable for an
/// unchanged folder; resuming and sharding do not depend on it (they go by id).
/// Files named explicitly are taken whatever their extension. Symbolic links to folders are not followed.
public struct ImageEnumerator: Sequence, IteratorProtocol {
    public static let chunkSize = 4096

    /// A folder being read: its handle, the id prefix of its files, the sub-folders found so far.
    private final class OpenFolder {
        let path: String, idPrefix: String
        let handle: OpaquePointer
        var subfolders: [String] = []
        init(path: String, idPrefix: String, handle: OpaquePointer) {
            self.path = path
            self.idPrefix = idPrefix
            self.handle = handle
        }
        deinit { closedir(handle) }
    }

    private var roots: [String]
    private let recursive: Bool
    /// Folders still to open, as (path, id prefix), the next one last.
    private var pendingFolders: [(String, String)] = []
    private var current: OpenFolder?
    private var ready: [ImageEntry] = []

    public init(paths: [String], recursive: Bool) {
        roots = paths.reversed()
        self.recursive = recursive
    }

    public static func isImageName(_ name: String) -> Bool {
        let lower = name.lowercased()
        return lower.hasSuffix(".tif") || lower.hasSuffix(".tiff")
    }

    /// The name without its last extension.
    public static func stem(_ name: String) -> String {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return name }
        return String(name[..<dot])
    }

    public mutating func next() -> ImageEntry? {
        while true {
            if !ready.isEmpty { return ready.removeLast() }
            if let folder = current {
                readChunk(folder)
                continue
            }
            if let (path, prefix) = pendingFolders.popLast() {
                openFolder(path, idPrefix: prefix)
                continue
            }
            guard let root = roots.popLast() else { return nil }
            var info = stat()
            if stat(root, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR {
                openFolder(root, idPrefix: "")
            } else {
                // A file (or something the decoder will report on).
                let name = URL(fileURLWithPath: root).lastPathComponent
                return ImageEntry(path: root, id: Self.stem(name))
            }
        }
    }

    private mutating func openFolder(_ path: String, idPrefix: String) {
        guard let handle = opendir(path) else {
            ready = [ImageEntry(path: path, id: idPrefix.isEmpty ? path : String(idPrefix.dropLast()),
                                problem: "cannot list the folder: \(String(cString: strerror(errno)))")]
            return
        }
        current = OpenFolder(path: path, idPrefix: idPrefix, handle: handle)
    }

    /// Reads up to `chunkSize` directory entries; when the folder is exhausted, queues its sub-folders.
    private mutating func readChunk(_ folder: OpenFolder) {
        var names: [String] = []
        var exhausted = false
        while names.count < Self.chunkSize {
            guard let entry = readdir(folder.handle) else { exhausted = true; break }
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name == "." || name == ".." { continue }
            let type = entry.pointee.d_type
            let isFolder: Bool
            if type == UInt8(DT_UNKNOWN) {
                var info = stat()
                isFolder = lstat(folder.path + "/" + name, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
            } else {
                isFolder = type == UInt8(DT_DIR)
            }
            if isFolder && !Self.isImageName(name) {
                if recursive { folder.subfolders.append(name) }
                continue
            }
            // Image-named folders are passed on: the decoder reports "is a folder" for them.
            if Self.isImageName(name) { names.append(name) }
        }
        // Sorted, then reversed so that removeLast() yields them in order.
        ready = names.sorted(by: >).map { ImageEntry(path: folder.path + "/" + $0, id: folder.idPrefix + Self.stem($0)) }
        if exhausted {
            current = nil
            for sub in folder.subfolders.sorted(by: >) {
                pendingFolders.append((folder.path + "/" + sub, folder.idPrefix + sub + "/"))
            }
        }
    }
}
