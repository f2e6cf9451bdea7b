import CHDF5
import Foundation
import ResNetSupport

/// A read-only view of an HDF5 file through libhdf5 that turns every failure into a one-line `FileError`.
/// Sizes are checked against limits before anything is allocated, so a file claiming a huge dataset or
/// attribute is refused rather than read.
final class HDF5File {
    /// What a dataset claims to be, read from its header without touching its data.
    struct Dataset {
        /// Path from the group the walk started at, `/`-separated, without a leading slash.
        var path: String
        var shape: [Int]
        var typeClass: H5T_class_t
        var elementSize: Int
        var count: Int { shape.reduce(1, *) }
        var isFloat: Bool { typeClass == H5T_FLOAT }
        var isInteger: Bool { typeClass == H5T_INTEGER }
    }

    /// Largest dataset read (elements): ResNet-18 at width 64 has at most 2.4 M per tensor.
    static let maxDatasetElements = 1 << 26
    /// Largest text attribute read (bytes): Keras' name lists are split into 64 KB pieces.
    static let maxAttributeBytes = 64 << 20
    /// Bounds on the group walk (a file may link groups into cycles).
    static let maxDepth = 16, maxObjects = 100_000

    /// libhdf5 (Debian's serial build) is not thread-safe: every use of it goes through this lock.
    static let lock = NSLock()

    let path: String
    let id: hid_t

    /// Opens `path` read-only; a file that is not HDF5, or is truncated or damaged, gives a one-line error.
    init(path: String) throws {
        self.path = path
        Self.silenceLibraryErrors()
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw FileError(path, FileManager.default.fileExists(atPath: path) ? "cannot open: permission denied" : "no such file")
        }
        guard H5Fis_hdf5(path) > 0 else {
            H5Eclear2(hid_t(H5E_DEFAULT))
            throw FileError(path, "not an HDF5 file (no HDF5 signature)")
        }
        let id = H5Fopen(path, 0 /* H5F_ACC_RDONLY */, hid_t(H5P_DEFAULT))
        guard id >= 0 else {
            throw FileError(path, "cannot open the HDF5 file, it is truncated or damaged (\(Self.libraryMessage()))")
        }
        self.id = id
    }

    deinit { H5Fclose(id) }

    /// Turns off libhdf5's habit of printing its error stack to stderr: our errors say what went wrong.
    static func silenceLibraryErrors() {
        H5open()
        H5Eset_auto2(hid_t(H5E_DEFAULT), nil, nil)
        // Nothing outside the file is read: with the external link class gone, no name can lead to another file.
        _ = externalLinksDisabled
    }

    private static let externalLinksDisabled: Void = {
        H5Lunregister(H5L_TYPE_EXTERNAL)
        H5Eclear2(hid_t(H5E_DEFAULT))
    }()

    /// Refuses data stored outside the file: external storage (raw data in other files, e.g. /etc/passwd) and
    /// virtual datasets (data drawn from other datasets, possibly in other files).
    func checkStorage(dataset id: hid_t, name: String) throws {
        let plist = H5Dget_create_plist(id)
        guard plist >= 0 else { throw damaged("dataset '\(name)': unreadable storage properties") }
        defer { H5Pclose(plist) }
        if H5Pget_external_count(plist) != 0 {
            throw FileError(path, "dataset '\(name)' keeps its data in external files; refused (nothing outside the model file is read)")
        }
        if H5Pget_layout(plist) == H5D_VIRTUAL {
            throw FileError(path, "dataset '\(name)' is a virtual dataset; refused (nothing outside the model file is read)")
        }
        // libhdf5 allocates what the layout claims before it notices the bytes are not in the file.
        var fileSize: hsize_t = 0
        let storage = H5Dget_storage_size(id)
        if H5Fget_filesize(self.id, &fileSize) >= 0, storage > fileSize {
            throw FileError(path, "dataset '\(name)' claims \(storage) bytes of storage, more than the whole file (\(fileSize)): truncated or damaged")
        }
    }

    /// The innermost description on libhdf5's error stack (the root cause), and clears the stack.
    static func libraryMessage() -> String {
        var messages: [String] = []
        withUnsafeMutablePointer(to: &messages) { list in
            _ = H5Ewalk2(hid_t(H5E_DEFAULT), H5E_WALK_DOWNWARD, { _, error, data in
                if let description = error?.pointee.desc, let data {
                    data.assumingMemoryBound(to: [String].self).pointee.append(String(cString: description))
                }
                return 0
            }, list)
        }
        H5Eclear2(hid_t(H5E_DEFAULT))
        return messages.last ?? "libhdf5 gave no reason"
    }

    func damaged(_ what: String) -> FileError {
        FileError(path, "\(what): the file is truncated or damaged (\(Self.libraryMessage()))")
    }

    // MARK: Groups

    /// Whether `name` (a path relative to `group`) exists and is a group.
    func hasGroup(_ name: String, in group: hid_t) -> Bool {
        guard H5Lexists(group, name, hid_t(H5P_DEFAULT)) > 0 else { H5Eclear2(hid_t(H5E_DEFAULT)); return false }
        let object = H5Oopen(group, name, hid_t(H5P_DEFAULT))
        guard object >= 0 else { H5Eclear2(hid_t(H5E_DEFAULT)); return false }
        defer { H5Oclose(object) }
        return H5Iget_type(object) == H5I_GROUP
    }

    /// Opens a group; the caller closes it with `H5Gclose`.
    func openGroup(_ name: String, in group: hid_t) throws -> hid_t {
        let id = H5Gopen2(group, name, hid_t(H5P_DEFAULT))
        guard id >= 0 else { throw FileError(path, "group '\(name)' is missing or unreadable (\(Self.libraryMessage()))") }
        return id
    }

    /// Every dataset below `group`, depth first, with paths relative to it.
    func datasets(in group: hid_t) throws -> [Dataset] {
        var found: [Dataset] = []
        var visited = 0
        try walk(group, prefix: "", depth: 0, visited: &visited, into: &found)
        return found
    }

    private func walk(_ group: hid_t, prefix: String, depth: Int, visited: inout Int, into found: inout [Dataset]) throws {
        guard depth < Self.maxDepth else { throw FileError(path, "groups nested deeper than \(Self.maxDepth) levels at '\(prefix)'") }
        var info = H5G_info_t()
        guard H5Gget_info(group, &info) >= 0 else { throw damaged("cannot list group '/\(prefix)'") }
        for index in 0..<info.nlinks {
            visited += 1
            guard visited <= Self.maxObjects else { throw FileError(path, "more than \(Self.maxObjects) objects: not a weights file") }
            let name = try linkName(group, index: index, prefix: prefix)
            var link = H5L_info_t()
            guard H5Lget_info(group, name, &link, hid_t(H5P_DEFAULT)) >= 0 else { throw damaged("cannot read link '\(prefix)\(name)'") }
            if link.type != H5L_TYPE_HARD && link.type != H5L_TYPE_SOFT {
                throw FileError(path, "'\(prefix)\(name)' is an external or user-defined link; refused (nothing outside the model file is read)")
            }
            let child = H5Oopen(group, name, hid_t(H5P_DEFAULT))
            guard child >= 0 else { throw damaged("cannot open '\(prefix)\(name)'") }
            defer { H5Oclose(child) }
            switch H5Iget_type(child) {
            case H5I_GROUP: try walk(child, prefix: "\(prefix)\(name)/", depth: depth + 1, visited: &visited, into: &found)
            case H5I_DATASET: found.append(try describe(dataset: child, path: prefix + name))
            default: continue  // committed datatypes hold no weights
            }
        }
    }

    private func linkName(_ group: hid_t, index: hsize_t, prefix: String) throws -> String {
        let length = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, nil, 0, hid_t(H5P_DEFAULT))
        guard length > 0, length < 65_536 else { throw damaged("cannot read a link name in '/\(prefix)'") }
        var buffer = [CChar](repeating: 0, count: Int(length) + 1)
        guard H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, &buffer, buffer.count, hid_t(H5P_DEFAULT)) == length else {
            throw damaged("cannot read a link name in '/\(prefix)'")
        }
        return String(cString: buffer)
    }

    // MARK: Datasets

    /// Opens a dataset by path relative to `group` and describes it.
    func dataset(_ name: String, in group: hid_t) throws -> Dataset {
        let id = H5Dopen2(group, name, hid_t(H5P_DEFAULT))
        guard id >= 0 else { throw FileError(path, "dataset '\(name)' is missing or unreadable (\(Self.libraryMessage()))") }
        defer { H5Dclose(id) }
        return try describe(dataset: id, path: name)
    }

    private func describe(dataset id: hid_t, path name: String) throws -> Dataset {
        try checkStorage(dataset: id, name: name)
        let space = H5Dget_space(id)
        guard space >= 0 else { throw damaged("dataset '\(name)': unreadable shape") }
        defer { H5Sclose(space) }
        let rank = H5Sget_simple_extent_ndims(space)
        guard rank >= 0, rank <= 32 else { throw damaged("dataset '\(name)': unreadable shape") }
        var dims = [hsize_t](repeating: 0, count: Int(rank))
        if rank > 0 { guard H5Sget_simple_extent_dims(space, &dims, nil) == rank else { throw damaged("dataset '\(name)': unreadable shape") } }
        let type = H5Dget_type(id)
        guard type >= 0 else { throw damaged("dataset '\(name)': unreadable type") }
        defer { H5Tclose(type) }
        var count: UInt64 = 1
        var overflow = false
        for d in dims where !overflow { (count, overflow) = count.multipliedReportingOverflow(by: d) }
        guard !overflow, count <= UInt64(Self.maxDatasetElements), dims.allSatisfy({ $0 <= UInt64(Int32.max) }) else {
            throw FileError(path, "dataset '\(name)' claims shape [\(dims.map(String.init).joined(separator: ", "))], "
                                + "absurdly large for a weight (limit \(Self.maxDatasetElements) elements)")
        }
        return Dataset(path: name, shape: dims.map { Int($0) }, typeClass: H5Tget_class(type), elementSize: H5Tget_size(type))
    }

    /// A floating-point (or, for counters, integer) dataset's values as float32: libhdf5 converts
    /// float64, float16 and integers on the way.
    func readFloats(_ dataset: Dataset, in group: hid_t) throws -> [Float] {
        guard dataset.isFloat || dataset.isInteger else {
            let kind = dataset.typeClass == H5T_STRING ? "text" : "a non-numeric type"
            throw FileError(path, "dataset '\(dataset.path)' holds \(kind), expected floating-point numbers")
        }
        // A damaged type can claim elements of gigabytes, which libhdf5 would allocate a conversion buffer for.
        guard [1, 2, 4, 8].contains(dataset.elementSize) else {
            throw FileError(path, "dataset '\(dataset.path)' has \(dataset.elementSize)-byte numbers: truncated or damaged")
        }
        let id = H5Dopen2(group, dataset.path, hid_t(H5P_DEFAULT))
        guard id >= 0 else { throw damaged("cannot open dataset '\(dataset.path)'") }
        defer { H5Dclose(id) }
        try checkStorage(dataset: id, name: dataset.path)
        var values = [Float](repeating: 0, count: dataset.count)
        let status = values.withUnsafeMutableBytes { buffer in
            H5Dread(id, H5T_NATIVE_FLOAT_g, hid_t(H5S_ALL), hid_t(H5S_ALL), hid_t(H5P_DEFAULT), buffer.baseAddress)
        }
        guard status >= 0 else { throw damaged("cannot read dataset '\(dataset.path)'") }
        return values
    }

    // MARK: Attributes

    /// A text attribute (a string or an array of strings, fixed-length or variable-length) of `object`,
    /// or nil when it is absent.
    func strings(attribute name: String, of object: hid_t) throws -> [String]? {
        guard H5Aexists(object, name) > 0 else { H5Eclear2(hid_t(H5E_DEFAULT)); return nil }
        let attribute = H5Aopen(object, name, hid_t(H5P_DEFAULT))
        guard attribute >= 0 else { throw damaged("cannot open attribute '\(name)'") }
        defer { H5Aclose(attribute) }
        let type = H5Aget_type(attribute), space = H5Aget_space(attribute)
        defer { H5Tclose(type); H5Sclose(space) }
        guard type >= 0, space >= 0 else { throw damaged("attribute '\(name)': unreadable type") }
        let points = H5Sget_simple_extent_npoints(space)
        guard points >= 0, points <= Self.maxAttributeBytes / 8 else { throw FileError(path, "attribute '\(name)' claims \(points) entries") }
        // Keras stores an empty list as an empty float array.
        if points == 0 { return [] }
        guard H5Tget_class(type) == H5T_STRING else { throw FileError(path, "attribute '\(name)' is not text") }
        let count = Int(points)
        if H5Tis_variable_str(type) > 0 {
            let memory = H5Tcopy(H5T_C_S1_g)
            defer { H5Tclose(memory) }
            H5Tset_size(memory, -1)  // H5T_VARIABLE, (size_t)-1: size_t is imported as Int
            H5Tset_cset(memory, H5Tget_cset(type))
            var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
            guard H5Aread(attribute, memory, &pointers) >= 0 else { throw damaged("cannot read attribute '\(name)'") }
            defer { pointers.forEach { H5free_memory($0) } }
            return pointers.map { $0.map { String(cString: $0) } ?? "" }
        }
        let size = H5Tget_size(type)
        guard size > 0, size <= Self.maxAttributeBytes, count * size <= Self.maxAttributeBytes else {
            throw FileError(path, "attribute '\(name)' claims \(count) strings of \(size) bytes")
        }
        var bytes = [UInt8](repeating: 0, count: count * size)
        guard H5Aread(attribute, type, &bytes) >= 0 else { throw damaged("cannot read attribute '\(name)'") }
        return (0..<count).map { index in
            let entry = bytes[(index * size)..<((index + 1) * size)]
            let text = entry.prefix { $0 != 0 }
            return String(decoding: text, as: UTF8.self).trimmingCharacters(in: .whitespaces)
        }
    }

    /// A list attribute the way Keras stores it: `name`, or when too large for one attribute header
    /// `name0`, `name1`, … concatenated. Nil when absent.
    func splitStrings(attribute name: String, of object: hid_t) throws -> [String]? {
        if let whole = try strings(attribute: name, of: object) { return whole }
        var parts: [String] = []
        var index = 0
        while let chunk = try strings(attribute: "\(name)\(index)", of: object) {
            parts += chunk
            index += 1
        }
        return index == 0 ? nil : parts
    }
}
