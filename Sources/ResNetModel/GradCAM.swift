/// Grad-CAM (Selvaraju et al.) at layer4's output A, [h, w, C] NHWC, for one image:
///   α_k = mean over (i, j) of ∂y_c/∂A_k(i, j),  CAM = ReLU(Σ_k α_k A_k),  divided by its maximum (0 stays 0).
/// A reaches the head only through the global average pool f_k = mean_ij A_k(i, j), so
/// ∂y_c/∂A_k(i, j) = (1/hw) ∂y_c/∂f_k, and α_k = (1/hw) ∂y_c/∂f_k: one backward pass through the (folded,
/// eval-mode) head, none through the backbone.
public struct GradCAM {
    /// The normalised map at layer4's resolution, [height, width], row-major, in [0, 1].
    public var map: [Float]
    public var height: Int, width: Int
    /// The class explained and the logits of the image.
    public var classIndex: Int
    public var logits: [Float]

    /// The name of the observation that is layer4's output (the last block's bn2 after residual and ReLU).
    public static func layerName(_ architecture: Architecture) -> String { "\(architecture.blocks.last!.name).bn2" }

    /// Grad-CAM of one prepared NHWC image [height, width, 3] for class `classIndex` (default: the predicted class).
    /// Precondition: the plan has a head and 0 ≤ classIndex < numClasses.
    public static func compute(plan: InferencePlan, image: UnsafePointer<Float>, height: Int, width: Int,
                               classIndex: Int? = nil) -> GradCAM {
        guard let head = plan.head else { preconditionFailure("Grad-CAM needs the head") }
        let name = layerName(plan.architecture)
        var activation: [Float] = [], geometry: Geometry?
        var pooled = [Float](repeating: 0, count: plan.featureWidth)
        pooled.withUnsafeMutableBufferPointer { f in
            plan.observe(images: image, count: 1, height: height, width: width, features: f.baseAddress!) { observation in
                if observation.name == name, let output = observation.output {
                    activation = Array(output)
                    geometry = observation.geometry
                }
            }
        }
        let g = geometry!
        let (logits, gradient) = head.gradient(features: pooled, classIndex: classIndex)
        let c = classIndex ?? argmax(logits)
        let cam = camFromGradient(activation, height: g.height, width: g.width, channels: plan.featureWidth, featureGradient: gradient)
        return GradCAM(map: cam, height: g.height, width: g.width, classIndex: c, logits: logits)
    }

    /// CAM = ReLU(Σ_k α_k A_k) / max, with α_k = ∂y_c/∂f_k / (height · width); A is [height·width, channels].
    public static func camFromGradient(_ activation: [Float], height: Int, width: Int, channels: Int,
                                       featureGradient: [Float]) -> [Float] {
        precondition(activation.count == height * width * channels && featureGradient.count == channels)
        let area = Float(height * width)
        let alpha = featureGradient.map { $0 / area }
        var cam = [Float](repeating: 0, count: height * width)
        for p in 0..<(height * width) {
            var sum: Float = 0
            for k in 0..<channels { sum += alpha[k] * activation[p * channels + k] }
            cam[p] = max(0, sum)
        }
        let peak = cam.max() ?? 0
        return peak > 0 ? cam.map { $0 / peak } : cam
    }

    /// Bilinear resize of a [height, width] map with half-pixel centres, as PyTorch's
    /// `F.interpolate(mode="bilinear", align_corners=False)`: source = (dst + 0.5) · in/out − 0.5, clamped at 0.
    public static func upsample(_ map: [Float], height: Int, width: Int, toHeight: Int, toWidth: Int) -> [Float] {
        precondition(map.count == height * width && toHeight > 0 && toWidth > 0)
        func taps(_ outSide: Int, _ inSide: Int) -> [(Int, Int, Float)] {
            let scale = Float(inSide) / Float(outSide)
            return (0..<outSide).map { d in
                let source = max(0, (Float(d) + 0.5) * scale - 0.5)
                let i0 = min(Int(source), inSide - 1)
                let i1 = i0 < inSide - 1 ? i0 + 1 : i0
                return (i0, i1, source - Float(i0))
            }
        }
        let rows = taps(toHeight, height), columns = taps(toWidth, width)
        var out = [Float](repeating: 0, count: toHeight * toWidth)
        for (y, (y0, y1, ly)) in rows.enumerated() {
            for (x, (x0, x1, lx)) in columns.enumerated() {
                let top = (1 - lx) * map[y0 * width + x0] + lx * map[y0 * width + x1]
                let bottom = (1 - lx) * map[y1 * width + x0] + lx * map[y1 * width + x1]
                out[y * toWidth + x] = (1 - ly) * top + ly * bottom
            }
        }
        return out
    }
}
