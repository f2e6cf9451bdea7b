import CTIFF
import Foundation
import ResNetSupport

/// Reads TIFF images with libtiff into `RGBImage`s.
///
/// 8- and 16-bit gray and RGB(A) images, in strips or tiles, with contiguous or separate planes and any
/// compression libtiff decodes, are read sample by sample (16-bit precision kept, alpha and other extra
/// samples dropped). Everything else libtiff can render (palette, YCbCr/JPEG, CMYK, 1/2/4-bit) goes
/// through `TIFFReadRGBAImageOriented` at 8 bits. Only the first image of a multi-page file is read, and
/// the orientation tag is ignored outside the RGBA path (patches are stored top-left).
/// Thread-safe: every call has its own TIFF handle and its own error buffer; libtiff never prints.
public enum TIFFDecoder {
    /// Largest image accepted, in pixels (8192²): a patch decoder has no business allocating more.
    public static let maxPixels = Limits.maxImagePixels
    /// Largest image this run decodes, in pixels: the commands set it from `--max-image-pixels` (or the default
    /// for their batch size) before the first image is read.
    public nonisolated(unsafe) static var pixelBudget = Limits.defaultPixelBudget(batchSize: 64)
    /// No single libtiff allocation may exceed this (a lying header cannot make libtiff allocate gigabytes).
    static let maxLibTIFFAllocation = 1 << 30
    static let maxTileSide = 1 << 16

    /// libtiff's process-wide handlers print to stderr; every handle here has its own, so they are turned off
    /// once (a lazily initialised static runs exactly once, whatever the threads).
    static let globalHandlersSilenced: Void = {
        TIFFSetErrorHandler(nil)
        TIFFSetWarningHandler(nil)
    }()

    public static func decode(path: String) throws -> RGBImage {
        _ = globalHandlersSilenced
        let fd = try openChecked(path)
        var messages = ResNetKitTIFFMessages()
        guard let tif = resnetkit_tiff_open(fd, path, &messages, tmsize_t(maxLibTIFFAllocation)) else {
            close(fd)
            throw FileError(path, "not a readable TIFF: \(libtiffMessage(&messages, path: path, fallback: "libtiff cannot open it"))")
        }
        defer { TIFFClose(tif) }
        do {
            return try decodeOpened(tif, path: path, fileSize: fileSize(fd))
        } catch let error as FileError {
            // Prefer libtiff's own account of what is wrong, when it gave one.
            let detail = libtiffMessage(&messages, path: path, fallback: "")
            if detail.isEmpty || error.problem.contains(detail) { throw error }
            throw FileError(path, "\(error.problem) (\(detail))")
        }
    }

    /// Opens the file for reading, naming the reason when that is impossible.
    static func openChecked(_ path: String) throws -> Int32 {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            var linkInfo = stat()
            if code == ENOENT && lstat(path, &linkInfo) == 0 && (linkInfo.st_mode & S_IFMT) == S_IFLNK {
                throw FileError(path, "is a symbolic link to a file that does not exist")
            }
            throw FileError(path, code == ENOENT ? "no such file" : "cannot read: \(systemErrorMessage(code))")
        }
        if (info.st_mode & S_IFMT) == S_IFDIR { throw FileError(path, "is a folder, not a TIFF image") }
        if (info.st_mode & S_IFMT) != S_IFREG { throw FileError(path, "is not a regular file") }
        if info.st_size == 0 { throw FileError(path, "the file is empty") }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw FileError(path, "cannot open: \(systemErrorMessage())") }
        var magic = [UInt8](repeating: 0, count: 4)
        let got = read(fd, &magic, 4)
        let tiffMagic: [[UInt8]] = [[0x49, 0x49, 0x2a, 0], [0x4d, 0x4d, 0, 0x2a], [0x49, 0x49, 0x2b, 0], [0x4d, 0x4d, 0, 0x2b]]
        guard got == 4, tiffMagic.contains(magic) else {
            close(fd)
            throw FileError(path, got < 4 ? "not a TIFF image: only \(info.st_size) bytes"
                                          : "not a TIFF image (it does not start with II*/MM*)")
        }
        lseek(fd, 0, SEEK_SET)
        return fd
    }

    static func fileSize(_ fd: Int32) -> Int {
        var info = stat()
        return fstat(fd, &info) == 0 ? Int(info.st_size) : 0
    }

    static func libtiffMessage(_ messages: inout ResNetKitTIFFMessages, path: String, fallback: String) -> String {
        // One line: libtiff's messages may hold line breaks (e.g. from libjpeg).
        let text = withUnsafeBytes(of: &messages.message) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }).map { $0 < 0x20 ? 0x20 : $0 }, as: UTF8.self)
        }.trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty else { return fallback }
        // libtiff often starts its messages with the file name, which the FileError already names.
        return text.hasPrefix(path + ": ") ? String(text.dropFirst(path.count + 2)) : text
    }

    /// What the tags say about the pixel layout.
    struct Layout {
        var width: Int, height: Int
        var samplesPerPixel: Int, bitsPerSample: Int
        var photometric: Int, planarSeparate: Bool, tiled: Bool
        /// Samples that become colour: 1 (gray, replicated to RGB) or 3.
        var colourSamples: Int { photometric == Int(PHOTOMETRIC_RGB) ? 3 : 1 }
    }

    static func tag16(_ tif: OpaquePointer, _ tag: Int32) -> Int? {
        var value: UInt16 = 0
        return resnetkit_tiff_get_u16(tif, UInt32(tag), &value) == 1 ? Int(value) : nil
    }

    static func tag32(_ tif: OpaquePointer, _ tag: Int32) -> Int? {
        var value: UInt32 = 0
        return resnetkit_tiff_get_u32(tif, UInt32(tag), &value) == 1 ? Int(value) : nil
    }

    static func decodeOpened(_ tif: OpaquePointer, path: String, fileSize: Int) throws -> RGBImage {
        guard let width = tag32(tif, TIFFTAG_IMAGEWIDTH), let height = tag32(tif, TIFFTAG_IMAGELENGTH) else {
            throw FileError(path, "not a valid TIFF: no image dimensions")
        }
        guard width > 0, height > 0 else { throw FileError(path, "not a valid TIFF: the image is \(width)x\(height)") }
        // Each side first: two 32-bit sides from the file overflow their product.
        guard width <= maxPixels, height <= maxPixels, width * height <= maxPixels else {
            throw FileError(path, "absurd dimensions \(width)x\(height) (more than \(maxPixels) pixels)")
        }
        guard width * height <= pixelBudget else {
            throw FileError(path, "\(width)x\(height) is \(width * height) pixels, more than the per-image budget of \(pixelBudget) (--max-image-pixels raises it, up to \(maxPixels))")
        }
        let layout = Layout(width: width, height: height,
                            samplesPerPixel: tag16(tif, TIFFTAG_SAMPLESPERPIXEL) ?? 1,
                            bitsPerSample: tag16(tif, TIFFTAG_BITSPERSAMPLE) ?? 1,
                            photometric: tag16(tif, TIFFTAG_PHOTOMETRIC) ?? -1,
                            planarSeparate: tag16(tif, TIFFTAG_PLANARCONFIG) == Int(PLANARCONFIG_SEPARATE),
                            tiled: TIFFIsTiled(tif) != 0)
        guard (1...16).contains(layout.samplesPerPixel) else {
            throw FileError(path, "not a valid TIFF: \(layout.samplesPerPixel) samples per pixel")
        }
        let compression = tag16(tif, TIFFTAG_COMPRESSION) ?? Int(COMPRESSION_NONE)
        if compression == Int(COMPRESSION_NONE) {
            // Uncompressed pixel data cannot be larger than the file that holds it.
            let needed = width * height * layout.samplesPerPixel * max(1, layout.bitsPerSample) / 8
            if needed > fileSize {
                throw FileError(path, "truncated: a \(width)x\(height) image needs \(needed) bytes of pixels, the file has \(fileSize)")
            }
        }
        let sampleFormat = tag16(tif, TIFFTAG_SAMPLEFORMAT) ?? Int(SAMPLEFORMAT_UINT)
        let direct = [Int(PHOTOMETRIC_MINISBLACK), Int(PHOTOMETRIC_MINISWHITE), Int(PHOTOMETRIC_RGB)].contains(layout.photometric)
            && (layout.bitsPerSample == 8 || layout.bitsPerSample == 16)
            && layout.samplesPerPixel >= layout.colourSamples
        if direct {
            guard sampleFormat == Int(SAMPLEFORMAT_UINT) else {
                throw FileError(path, "unsupported sample format \(sampleFormat) (unsigned integers expected)")
            }
            return try readSamples(tif, layout, path: path)
        }
        guard layout.bitsPerSample <= 16 else {
            throw FileError(path, "unsupported: \(layout.bitsPerSample) bits per sample")
        }
        return try readRGBA(tif, layout, path: path)
    }

    /// The general path: libtiff renders the image as 8-bit RGBA (palette, YCbCr, JPEG, CMYK, few-bit gray).
    static func readRGBA(_ tif: OpaquePointer, _ layout: Layout, path: String) throws -> RGBImage {
        var reason = [CChar](repeating: 0, count: 1024)
        guard TIFFRGBAImageOK(tif, &reason) == 1 else {
            let text = String(cString: reason)
            throw FileError(path, "unsupported TIFF layout: \(text.isEmpty ? "libtiff cannot render it" : text)")
        }
        let count = layout.width * layout.height
        var raster = [UInt32](repeating: 0, count: count)
        let ok = raster.withUnsafeMutableBufferPointer {
            TIFFReadRGBAImageOriented(tif, UInt32(layout.width), UInt32(layout.height), $0.baseAddress, ORIENTATION_TOPLEFT, 0)
        }
        guard ok == 1 else { throw FileError(path, "truncated or corrupt image data") }
        var pixels = [Float](repeating: 0, count: count * 3)
        raster.withUnsafeBufferPointer { source in
            pixels.withUnsafeMutableBufferPointer { out in
                // libtiff packs ABGR: red in the low byte.
                for i in 0..<count {
                    let value = source[i]
                    out[3 * i] = Float(value & 0xff) / 255
                    out[3 * i + 1] = Float((value >> 8) & 0xff) / 255
                    out[3 * i + 2] = Float((value >> 16) & 0xff) / 255
                }
            }
        }
        return RGBImage(width: layout.width, height: layout.height, pixels: pixels)
    }

    /// The sample path for 8/16-bit gray and RGB(A): reads every strip or tile and scatters its samples into
    /// the RGB output. 8-bit RGB in contiguous strips (every PCam patch) is a strip read plus one pass.
    static func readSamples(_ tif: OpaquePointer, _ layout: Layout, path: String) throws -> RGBImage {
        let width = layout.width, height = layout.height, spp = layout.samplesPerPixel
        let bytesPerSample = layout.bitsPerSample / 8
        var pixels = [Float](repeating: 0, count: width * height * 3)
        let blockWidth: Int, blockHeight: Int, blockSize: Int
        if layout.tiled {
            guard let tw = tag32(tif, TIFFTAG_TILEWIDTH), let th = tag32(tif, TIFFTAG_TILELENGTH), tw > 0, th > 0 else {
                throw FileError(path, "not a valid TIFF: tiles without a tile size")
            }
            // Bounded before any arithmetic on them: real tiles are at most a few thousand pixels a side.
            guard tw <= maxTileSide, th <= maxTileSide else {
                throw FileError(path, "not a valid TIFF: absurd tile size \(tw)x\(th)")
            }
            (blockWidth, blockHeight, blockSize) = (tw, th, Int(TIFFTileSize(tif)))
        } else {
            let rows = min(height, tag32(tif, TIFFTAG_ROWSPERSTRIP) ?? height)
            (blockWidth, blockHeight, blockSize) = (width, max(1, rows), Int(TIFFStripSize(tif)))
        }
        let samplesPerBlockPixel = layout.planarSeparate ? 1 : spp
        let blockBytes = blockWidth * blockHeight * samplesPerBlockPixel * bytesPerSample
        guard blockSize >= blockBytes, blockBytes <= maxLibTIFFAllocation else {
            throw FileError(path, "not a valid TIFF: inconsistent \(layout.tiled ? "tile" : "strip") size")
        }
        let block = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 16)
        defer { block.deallocate() }
        let across = (width + blockWidth - 1) / blockWidth, down = (height + blockHeight - 1) / blockHeight
        let planes = layout.planarSeparate ? spp : 1
        let scale: Float = bytesPerSample == 1 ? 1 / 255 : 1 / 65535
        let invert = layout.photometric == Int(PHOTOMETRIC_MINISWHITE)
        try pixels.withUnsafeMutableBufferPointer { out in
            for plane in 0..<min(planes, layout.colourSamples) {
                for by in 0..<down {
                    for bx in 0..<across {
                        let x0 = bx * blockWidth, y0 = by * blockHeight
                        let read: Int
                        if layout.tiled {
                            let index = TIFFComputeTile(tif, UInt32(x0), UInt32(y0), 0, UInt16(plane))
                            read = Int(TIFFReadEncodedTile(tif, index, block, tmsize_t(blockSize)))
                        } else {
                            let index = TIFFComputeStrip(tif, UInt32(y0), UInt16(plane))
                            read = Int(TIFFReadEncodedStrip(tif, index, block, tmsize_t(blockSize)))
                        }
                        let rows = min(blockHeight, height - y0), columns = min(blockWidth, width - x0)
                        // The last strip may be short; anything less than its rows is missing data.
                        let needed = ((rows - 1) * blockWidth + columns) * samplesPerBlockPixel * bytesPerSample
                        guard read >= needed else {
                            throw FileError(path, "truncated or corrupt image data (\(layout.tiled ? "tile" : "strip") at row \(y0), column \(x0))")
                        }
                        scatter(block, bytesPerSample: bytesPerSample, blockWidth: blockWidth, rows: rows, columns: columns,
                                samplesPerPixel: samplesPerBlockPixel, firstSample: plane, colourSamples: layout.colourSamples,
                                scale: scale, invert: invert, into: out.baseAddress! + (y0 * width + x0) * 3, rowStride: width * 3)
                    }
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    /// Copies one block's colour samples into the RGB output (gray replicated to three channels).
    /// block: [rows ≥ rows, blockWidth, samplesPerPixel] samples; output rows `rowStride` floats apart.
    static func scatter(_ block: UnsafeRawPointer, bytesPerSample: Int, blockWidth: Int, rows: Int, columns: Int,
                        samplesPerPixel: Int, firstSample: Int, colourSamples: Int, scale: Float, invert: Bool,
                        into output: UnsafeMutablePointer<Float>, rowStride: Int) {
        func run<Sample: BinaryInteger>(_ samples: UnsafePointer<Sample>) {
            for y in 0..<rows {
                let source = samples + y * blockWidth * samplesPerPixel
                let row = output + y * rowStride
                if colourSamples == 3 && samplesPerPixel >= 3 {
                    // Contiguous RGB(A…): the common case.
                    for x in 0..<columns {
                        let s = source + x * samplesPerPixel
                        row[3 * x] = Float(s[0]) * scale
                        row[3 * x + 1] = Float(s[1]) * scale
                        row[3 * x + 2] = Float(s[2]) * scale
                    }
                } else if colourSamples == 3 {
                    // Separate planes: this block holds one channel.
                    for x in 0..<columns { row[3 * x + firstSample] = Float(source[x * samplesPerPixel]) * scale }
                } else {
                    for x in 0..<columns {
                        var value = Float(source[x * samplesPerPixel]) * scale
                        if invert { value = 1 - value }
                        row[3 * x] = value
                        row[3 * x + 1] = value
                        row[3 * x + 2] = value
                    }
                }
            }
        }
        if bytesPerSample == 1 {
            run(block.assumingMemoryBound(to: UInt8.self))
        } else {
            run(block.assumingMemoryBound(to: UInt16.self))
        }
    }
}
