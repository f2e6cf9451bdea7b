import Foundation
import ResNetModel

/// The seed's training transform on one image: random horizontal flip, random vertical flip, rotation by
/// a uniform angle in ±20° about the image centre (nearest neighbour, fill 0 as torchvision's
/// `RandomRotation` defaults), then the centre crop. Done as one inverse mapping per output pixel, so the
/// flipped and rotated full image is never materialised.
public struct Augmentation: Equatable, Sendable {
    public var horizontalFlip: Bool
    public var verticalFlip: Bool
    /// Counter-clockwise, in degrees.
    public var angle: Float

    public init(horizontalFlip: Bool, verticalFlip: Bool, angle: Float) {
        self.horizontalFlip = horizontalFlip
        self.verticalFlip = verticalFlip
        self.angle = angle
    }

    public static let identity = Augmentation(horizontalFlip: false, verticalFlip: false, angle: 0)
    public static let maxAngle: Float = 20

    public static func random(_ rng: inout SplitMix64) -> Augmentation {
        let h = rng.nextUnitFloat() < 0.5, v = rng.nextUnitFloat() < 0.5
        return Augmentation(horizontalFlip: h, verticalFlip: v, angle: (rng.nextUnitFloat() * 2 - 1) * maxAngle)
    }

    /// Writes the augmented centre crop [crop, crop, 3] of an 8-bit RGB image [height, width, 3] as
    /// value·scale + offset per channel (channels swapped when `bgr`); pixels rotated in from outside are 0.
    public func apply(_ image: UnsafePointer<UInt8>, width: Int, height: Int, crop: Int,
                      scale: [Float], offset: [Float], bgr: Bool, into output: UnsafeMutablePointer<Float>) {
        let top = ImagePreparation.centreCropOffset(side: height, crop: crop)
        let left = ImagePreparation.centreCropOffset(side: width, crop: crop)
        let cx = Float(width - 1) / 2, cy = Float(height - 1) / 2
        let radians = angle * .pi / 180
        let c = cos(radians), s = sin(radians)
        let source = bgr ? [2, 1, 0] : [0, 1, 2]
        for y in 0..<crop {
            for x in 0..<crop {
                // Output pixel in full-image coordinates, rotated back (inverse of a counter-clockwise
                // rotation on screen, y pointing down), then un-flipped.
                let dx = Float(left + x) - cx, dy = Float(top + y) - cy
                var sx = Int((c * dx - s * dy + cx).rounded())
                var sy = Int((s * dx + c * dy + cy).rounded())
                if horizontalFlip { sx = width - 1 - sx }
                if verticalFlip { sy = height - 1 - sy }
                let dst = output + (y * crop + x) * 3
                if sx < 0 || sx >= width || sy < 0 || sy >= height {
                    for ch in 0..<3 { dst[ch] = offset[ch] }
                } else {
                    let src = image + (sy * width + sx) * 3
                    for ch in 0..<3 { dst[ch] = Float(src[source[ch]]) * scale[ch] + offset[ch] }
                }
            }
        }
    }
}
