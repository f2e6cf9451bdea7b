import CTIFF
import Foundation
import ResNetSupport

/// One-channel float32 TIFFs (maps such as Grad-CAM's), written atomically through libtiff.
public enum FloatTIFF {
    /// Writes `values` ([height, width], row-major) as an uncompressed float32 gray TIFF in one strip.
    public static func write(path: String, width: Int, height: Int, values: [Float]) throws {
        precondition(width > 0 && height > 0 && values.count == width * height)
        _ = TIFFDecoder.globalHandlersSilenced
        try AtomicFile.write(to: path) { temp in
            guard let tif = TIFFOpen(temp, "w") else { throw FileError(path, "cannot create a file in this folder: \(systemErrorMessage())") }
            func set16(_ tag: Int32, _ value: Int32) { _ = resnetkit_tiff_set_u16(tif, UInt32(tag), UInt16(value)) }
            func set32(_ tag: Int32, _ value: Int) { _ = resnetkit_tiff_set_u32(tif, UInt32(tag), UInt32(value)) }
            set32(TIFFTAG_IMAGEWIDTH, width)
            set32(TIFFTAG_IMAGELENGTH, height)
            set16(TIFFTAG_BITSPERSAMPLE, 32)
            set16(TIFFTAG_SAMPLESPERPIXEL, 1)
            set16(TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_IEEEFP)
            set16(TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK)
            set16(TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG)
            set16(TIFFTAG_COMPRESSION, COMPRESSION_NONE)
            set32(TIFFTAG_ROWSPERSTRIP, height)
            var data = values
            let written = TIFFWriteEncodedStrip(tif, 0, &data, tmsize_t(values.count * 4))
            let closed = TIFFWriteDirectory(tif)
            TIFFClose(tif)
            guard written == values.count * 4, closed == 1 else { throw FileError(path, "write failed: \(systemErrorMessage())") }
        }
    }

    /// Reads a float32 one-channel TIFF written by `write` (one strip).
    public static func read(path: String) throws -> (width: Int, height: Int, values: [Float]) {
        _ = TIFFDecoder.globalHandlersSilenced
        // "c": no strip chopping, so the one strip written stays one strip.
        guard let tif = TIFFOpen(path, "rc") else { throw FileError(path, "not a readable TIFF") }
        defer { TIFFClose(tif) }
        guard let width = TIFFDecoder.tag32(tif, TIFFTAG_IMAGEWIDTH), let height = TIFFDecoder.tag32(tif, TIFFTAG_IMAGELENGTH),
              width > 0, height > 0, width * height <= TIFFDecoder.maxPixels else {
            throw FileError(path, "missing or absurd dimensions")
        }
        let bits = TIFFDecoder.tag16(tif, TIFFTAG_BITSPERSAMPLE), format = TIFFDecoder.tag16(tif, TIFFTAG_SAMPLEFORMAT)
        let samples = TIFFDecoder.tag16(tif, TIFFTAG_SAMPLESPERPIXEL), strips = Int(TIFFNumberOfStrips(tif))
        guard bits == 32, format == Int(SAMPLEFORMAT_IEEEFP), samples == 1, strips == 1 else {
            throw FileError(path, "not a one-strip float32 gray TIFF (\(bits ?? 0) bits, format \(format ?? 0), \(samples ?? 0) samples, \(strips) strips)")
        }
        var values = [Float](repeating: 0, count: width * height)
        let read = values.withUnsafeMutableBytes { TIFFReadEncodedStrip(tif, 0, $0.baseAddress, tmsize_t($0.count)) }
        guard read == width * height * 4 else { throw FileError(path, "truncated or corrupt image data") }
        return (width, height, values)
    }
}
