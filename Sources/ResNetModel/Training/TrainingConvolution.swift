/// A training convolution computed outside this module (ResNetDNNL's bf16 one on oneDNN). A protocol rather
/// than a closure pair: the implementation keeps per-layer state between forward and backward (its reduced
/// precision copies of the input and weight), and ResNetModel stays free of oneDNN.
///
/// Activations NHWC [N·H·W, channels] fp32, weight patch-major [Cout, kh, kw, Cin] fp32 (the master copy).
public protocol TrainingConvolution: AnyObject {
    /// y [N·Ho·Wo, Cout] = conv(x) for x [N·H·W, Cin]. `x` and `weight` stay valid until `backward`.
    /// `weightUnchanged`: the weight holds the same values as at the previous call (a frozen layer, or no
    /// optimizer step since), so what was derived from it may be reused. `forBackward` false: no `backward`
    /// follows (a frozen prefix of the network, a forward with `training` false), so nothing needs keeping for one.
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, weight: UnsafePointer<Float>, weightUnchanged: Bool,
                 forBackward: Bool, _ y: UnsafeMutablePointer<Float>)
    /// Builds what inputs of geometry `g` need, with and without a backward (`forward` builds it on first use
    /// otherwise), so that a failure is an error before training starts rather than a trap in the middle of it.
    func prepare(_ g: Geometry) throws
    /// For the last `forward`: dW (overwritten) and dx [N·H·W, Cin], each when non-nil, from dy [N·Ho·Wo, Cout].
    func backward(_ dy: UnsafePointer<Float>, weightGradient: UnsafeMutablePointer<Float>?,
                  inputGradient: UnsafeMutablePointer<Float>?)
    /// How inputs of geometry `g` are computed, for a debug log (e.g. the kernels a library chose); "" if nothing to say.
    func describe(_ g: Geometry) throws -> String
}

extension TrainingConvolution {
    public func describe(_ g: Geometry) throws -> String { "" }
}

/// Makes one `TrainingConvolution` per layer shape; its errors (a CPU it cannot serve) surface when set.
public typealias TrainingConvolutionFactory = (ConvShape) throws -> any TrainingConvolution
