/// A trainable tensor with its gradient, addressed by torchvision name. Convolution weights are kept
/// patch-major ([out, kh, kw, in], im2col's column order) and converted at the boundary.
public final class TrainableParameter {
    public let name: String
    /// torchvision shape.
    public let shape: [Int]
    let convShape: ConvShape?
    let value: UnsafeMutableBufferPointer<Float>
    let gradient: UnsafeMutableBufferPointer<Float>
    /// When false, backward computes no gradient for it and the optimizer leaves it alone.
    public var requiresGrad = true
    /// Bumped whenever the value changes (`setValues`, an optimizer step), so caches derived from the value (the
    /// fused frozen backbone, the bf16 convolutions' weight copies) know to rebuild.
    private(set) var version = 0

    public var count: Int { value.count }

    init(name: String, shape: [Int], convShape: ConvShape? = nil, torchValues: [Float]) {
        self.name = name
        self.shape = shape
        self.convShape = convShape
        value = .allocate(capacity: torchValues.count)
        gradient = .allocate(capacity: torchValues.count)
        gradient.initialize(repeating: 0)
        _ = value.initialize(from: convShape.map { patchMajorWeight(torchValues, $0) } ?? torchValues)
    }

    deinit {
        value.deallocate()
        gradient.deallocate()
    }

    func torchLayout(_ stored: [Float]) -> [Float] { convShape.map { torchWeight(stored, $0) } ?? stored }
    func internalLayout(_ torch: [Float]) -> [Float] { convShape.map { patchMajorWeight(torch, $0) } ?? torch }

    /// Current values, torchvision layout.
    public var values: [Float] { torchLayout(Array(value)) }
    /// Gradient of the last backward pass, torchvision layout.
    public var gradients: [Float] { torchLayout(Array(gradient)) }

    public func setValues(_ torch: [Float]) {
        precondition(torch.count == count, "\(name): \(torch.count) values for \(count)")
        _ = value.update(from: internalLayout(torch))
        version += 1
    }

    /// Records a change made to `value` in place (by the optimizer).
    func valueChanged() { version += 1 }
}
