import Dispatch
import Foundation
import ResNetModel
import ResNetSupport

/// A labels CSV (`id,label`, Kaggle's layout): integer or string labels mapped to class indices.
public struct LabelTable: Equatable, Sendable {
    public var ids: [String]
    /// Class index per id.
    public var labels: [Int]
    /// Name of each class index: the integer labels in increasing order, or the string labels sorted.
    public var classNames: [String]

    /// How the columns were chosen when the header does not name `id` and `label` (nil when it does).
    public var columnNote: String?

    /// Reads the CSV. The first row is a header (a UTF-8 byte order mark before it is ignored): the columns named
    /// `id` and `label` (any case) are used, or the first two columns when it names neither (`columnNote` says
    /// so). With `classNames` (a model's classes) labels must name one of them; without, the classes are the
    /// distinct labels found.
    public static func load(path: String, classNames given: [String]? = nil) throws -> LabelTable {
        guard var data = FileManager.default.contents(atPath: path) else {
            throw FileError(path, "cannot read the labels file: \(systemErrorMessage())")
        }
        if data.starts(with: [0xEF, 0xBB, 0xBF]) { data.removeFirst(3) }
        var rows = try CSV.parse(String(decoding: data, as: UTF8.self), path: path)
        guard let header = rows.first else { throw FileError(path, "is empty (expected a header row id,label and a row per image)") }
        rows.removeFirst()
        let names = header.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        var idColumn = 0, labelColumn = 1, note: String?
        if let id = names.firstIndex(of: "id"), let label = names.firstIndex(of: "label") {
            (idColumn, labelColumn) = (id, label)
        } else {
            guard header.count >= 2 else {
                throw FileError(path, "the header row has \(header.count) column(s); expected id,label")
            }
            note = "\(path): no id,label header; using its first two columns '\(header[0])' and '\(header[1])' as id and label"
        }
        let firstLine = 2
        guard !rows.isEmpty else { throw FileError(path, "no labelled rows after the header (expected id,label)") }
        var ids: [String] = [], labelNames: [String] = [], seen = Set<String>()
        for (index, row) in rows.enumerated() {
            guard row.count > max(idColumn, labelColumn) else {
                throw FileError(path, "record \(index + firstLine): \(row.count) field(s), the header has \(header.count)")
            }
            let id = row[idColumn], label = row[labelColumn].trimmingCharacters(in: .whitespaces)
            guard !id.isEmpty else { throw FileError(path, "record \(index + firstLine): the id is empty") }
            guard !label.isEmpty else { throw FileError(path, "record \(index + firstLine): the label of \(id) is empty") }
            guard seen.insert(id).inserted else { throw FileError(path, "record \(index + firstLine): id \(id) appears twice") }
            ids.append(id)
            labelNames.append(label)
        }
        var table = try classify(ids: ids, names: labelNames, given: given, path: path, firstLine: firstLine)
        table.columnNote = note
        return table
    }

    static func classify(ids: [String], names: [String], given: [String]?, path: String, firstLine: Int) throws -> LabelTable {
        let classes: [String]
        if let given {
            classes = given
        } else if names.allSatisfy({ Int($0) != nil }) {
            classes = Set(names.map { Int($0)! }).sorted().map(String.init)
        } else {
            classes = Set(names).sorted()
        }
        guard classes.count <= Limits.classes.upperBound else {
            throw FileError(path, "\(classes.count) distinct labels, more than the \(Limits.classes.upperBound) classes a head may have")
        }
        guard classes.count >= 2 || given != nil else {
            throw FileError(path, "only one class (\(classes.first ?? "")): a classifier needs at least two")
        }
        var index: [String: Int] = [:]
        for (i, name) in classes.enumerated() { index[name] = i }
        let labels = try names.enumerated().map { row, name -> Int in
            if let i = index[name] ?? Int(name).flatMap({ index[String($0)] }) { return i }
            throw FileError(path, "record \(row + firstLine): label \(name) is not one of the classes \(classes.prefix(10).joined(separator: ", "))")
        }
        return LabelTable(ids: ids, labels: labels, classNames: classes)
    }
}

/// Labelled images decoded once and kept in memory as 8-bit RGB (a 96x96 patch is 27 KB).
public final class ImageSet: @unchecked Sendable {
    public let ids: [String]
    public let labels: [Int]
    public let width: Int, height: Int
    /// One [height, width, 3] array per image, 0…255.
    public let pixels: [[UInt8]]
    /// Images that could not be used, with the reason.
    public let failures: [ImageFailure]

    public var count: Int { ids.count }

    /// The side of the square the network sees: the crop, or without one (crop 0) the images' shorter side.
    public func inputSide(crop: Int) -> Int { crop > 0 ? crop : min(width, height) }

    init(ids: [String], labels: [Int], width: Int, height: Int, pixels: [[UInt8]], failures: [ImageFailure]) {
        self.ids = ids; self.labels = labels; self.width = width; self.height = height
        self.pixels = pixels; self.failures = failures
    }

    /// `directory/<id>.tif` (or `.tiff`) for each id; unreadable images and images whose size differs from
    /// the first good one are listed in `failures`. Decoding runs on `threads` threads. Throws when the set
    /// would take more than half of the machine's memory.
    public static func load(directory: String, ids: [String], labels: [Int], threads: Int,
                            progress: (Int) -> Void = { _ in }) throws -> ImageSet {
        // Converted to 8 bits as soon as decoded, so float images never pile up (32 000 patches: 0.9 GB, not 3.5).
        var decoded = [(width: Int, height: Int, pixels: [UInt8])?](repeating: nil, count: ids.count)
        var problems = [String?](repeating: nil, count: ids.count)
        var paths = [String](repeating: "", count: ids.count)
        let chunk = 256
        var done = 0
        var start = 0
        while start < ids.count {
            let end = min(ids.count, start + chunk * max(1, threads))
            let slices = stride(from: start, to: end, by: chunk).map { $0..<min(end, $0 + chunk) }
            decoded.withUnsafeMutableBufferPointer { images in
                problems.withUnsafeMutableBufferPointer { errors in
                    paths.withUnsafeMutableBufferPointer { found in
                        let images = images, errors = errors, found = found
                        DispatchQueue.concurrentPerform(iterations: slices.count) { part in
                            for i in slices[part] {
                                let base = (directory as NSString).appendingPathComponent(ids[i])
                                let path = FileManager.default.fileExists(atPath: base + ".tif") || !FileManager.default.fileExists(atPath: base + ".tiff")
                                    ? base + ".tif" : base + ".tiff"
                                found[i] = path
                                do {
                                    let image = try TIFFDecoder.decode(path: path)
                                    images[i] = (image.width, image.height, image.pixels.map { UInt8((min(max($0, 0), 1) * 255).rounded()) })
                                } catch {
                                    errors[i] = "\(error)"
                                }
                            }
                        }
                    }
                }
            }
            done = end
            progress(done)
            start = end
            // The set is held in memory: refuse early, after the first chunk, when it could not fit.
            if let size = decoded.lazy.compactMap({ $0 }).first.map({ $0.width * $0.height * 3 }) {
                let needed = UInt64(size) * UInt64(ids.count)
                guard needed <= ProcessInfo.processInfo.physicalMemory / 2 else {
                    throw FileError(directory, "\(ids.count) images of \(size) bytes need \(needed >> 20) MiB in memory, more than half of this machine's; use fewer (--train-size, --valid-size)")
                }
            }
        }
        guard let first = decoded.first(where: { $0 != nil }) ?? nil else {
            throw FileError(directory, "none of the \(ids.count) labelled images could be read (first problem: \(problems.compactMap { $0 }.first ?? "none"))")
        }
        let width = first.width, height = first.height
        var keptIds: [String] = [], keptLabels: [Int] = [], failures: [ImageFailure] = []
        var pixels: [[UInt8]] = []
        pixels.reserveCapacity(ids.count)
        for i in 0..<ids.count {
            guard let image = decoded[i] else {
                failures.append(ImageFailure(id: ids[i], path: paths[i], reason: problems[i] ?? "unreadable"))
                continue
            }
            guard image.width == width, image.height == height else {
                failures.append(ImageFailure(id: ids[i], path: paths[i],
                                             reason: "\(paths[i]): is \(image.width)x\(image.height), the others are \(width)x\(height)"))
                continue
            }
            keptIds.append(ids[i])
            keptLabels.append(labels[i])
            pixels.append(image.pixels)
            decoded[i] = nil
        }
        return ImageSet(ids: keptIds, labels: keptLabels, width: width, height: height, pixels: pixels, failures: failures)
    }

    /// Writes images `indices` as a network batch [indices.count, crop, crop, 3] (crop 0: whole image),
    /// normalised per `preprocessing`, each with its own random augmentation when `augment`.
    public func fillBatch(_ indices: ArraySlice<Int>, preprocessing: Preprocessing, augment: Bool,
                          rng: inout SplitMix64, into output: UnsafeMutablePointer<Float>) {
        let crop = inputSide(crop: preprocessing.crop)
        let (scale, offset) = preprocessing.affine(maxValue: 255)
        let plan = indices.map { _ in augment ? Augmentation.random(&rng) : .identity }
        for (slot, (index, augmentation)) in zip(indices, plan).enumerated() {
            pixels[index].withUnsafeBufferPointer { image in
                augmentation.apply(image.baseAddress!, width: width, height: height, crop: crop,
                                   scale: scale, offset: offset, bgr: preprocessing.channelOrder == .bgr,
                                   into: output + slot * crop * crop * 3)
            }
        }
    }
}
