import ResNetModel
import ResNetSupport

/// A decoded image, whatever its file's layout was.
public struct RGBImage: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// Interleaved RGB, row-major [height, width, 3], 0...1 (sample / format max; 8- and 16-bit alike).
    public var pixels: [Float]

    public init(width: Int, height: Int, pixels: [Float]) {
        precondition(pixels.count == width * height * 3, "pixels do not match \(width)x\(height)x3")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// Turns decoded images into network input: centre crop, channel order and normalisation, as NHWC floats.
public enum ImagePreparation {
    /// Height and width of the prepared image (the crop, or the whole image when crop is 0).
    public static func outputSize(width: Int, height: Int, _ preprocessing: Preprocessing) -> (height: Int, width: Int) {
        preprocessing.crop > 0 ? (preprocessing.crop, preprocessing.crop) : (height, width)
    }

    /// torchvision's `CenterCrop` offset: `int(round((side - crop) / 2))`, where Python rounds half to even
    /// (96 → 49 starts at 24, not 23).
    public static func centreCropOffset(side: Int, crop: Int) -> Int {
        let difference = side - crop
        let half = difference / 2
        return difference % 2 == 0 || half % 2 == 0 ? half : half + 1
    }

    /// Writes the prepared image, [outHeight, outWidth, 3], to `into`.
    /// Throws when the image is smaller than the crop.
    public static func prepare(_ image: RGBImage, _ preprocessing: Preprocessing, into: UnsafeMutablePointer<Float>,
                               path: String) throws {
        let crop = preprocessing.crop
        if crop > 0 && (image.width < crop || image.height < crop) {
            throw FileError(path, "is \(image.width)x\(image.height), smaller than the crop \(crop)")
        }
        let (outHeight, outWidth) = outputSize(width: image.width, height: image.height, preprocessing)
        let top = crop > 0 ? centreCropOffset(side: image.height, crop: crop) : 0
        let left = crop > 0 ? centreCropOffset(side: image.width, crop: crop) : 0
        let (scale, offset) = preprocessing.affine(maxValue: 1)
        // Output channel c reads source channel c (RGB) or 2 − c (BGR).
        let bgr = preprocessing.channelOrder == .bgr
        let s0 = scale[0], s1 = scale[1], s2 = scale[2], o0 = offset[0], o1 = offset[1], o2 = offset[2]
        image.pixels.withUnsafeBufferPointer { source in
            let src = source.baseAddress!
            for y in 0..<outHeight {
                var input = src + ((top + y) * image.width + left) * 3
                var output = into + y * outWidth * 3
                for _ in 0..<outWidth {
                    let r = input[0], g = input[1], b = input[2]
                    output[0] = (bgr ? b : r) * s0 + o0
                    output[1] = g * s1 + o1
                    output[2] = (bgr ? r : b) * s2 + o2
                    input += 3
                    output += 3
                }
            }
        }
    }
}
