import CKernels
import Foundation

/// PyTorch's OneCycleLR (two phases, cosine annealing, `three_phase=False`) with beta1 cycling.
/// Stateless: the values for step `t` are a pure function of `t`, so a resumed run only needs the step.
public struct OneCycleSchedule: Equatable, Sendable, Codable {
    public var maxLR: Double
    public var totalSteps: Int
    public var pctStart: Double
    public var divFactor: Double
    public var finalDivFactor: Double
    public var baseMomentum: Double
    public var maxMomentum: Double

    public init(maxLR: Double, totalSteps: Int, pctStart: Double = 0.3, divFactor: Double = 25,
                finalDivFactor: Double = 1e4, baseMomentum: Double = 0.85, maxMomentum: Double = 0.95) {
        self.maxLR = maxLR
        self.totalSteps = totalSteps
        self.pctStart = pctStart
        self.divFactor = divFactor
        self.finalDivFactor = finalDivFactor
        self.baseMomentum = baseMomentum
        self.maxMomentum = maxMomentum
    }

    static func cosine(_ start: Double, _ end: Double, _ pct: Double) -> Double {
        end + (start - end) / 2 * (cos(Double.pi * pct) + 1)
    }

    /// Learning rate and beta1 in force at optimizer step `step` (0-based), with PyTorch's phase boundaries:
    /// warm-up ends at step `pct_start·total − 1`, annealing at `total − 1` (both as floats).
    public func values(at step: Int) -> (lr: Double, beta1: Double) {
        let initial = maxLR / divFactor, minimum = initial / finalDivFactor
        let warmupEnd = pctStart * Double(totalSteps) - 1, end = Double(totalSteps - 1)
        let t = Double(step)
        if t <= warmupEnd {
            let pct = t / warmupEnd
            return (Self.cosine(initial, maxLR, pct), Self.cosine(maxMomentum, baseMomentum, pct))
        }
        let pct = (t - warmupEnd) / (end - warmupEnd)
        return (Self.cosine(maxLR, minimum, pct), Self.cosine(baseMomentum, maxMomentum, pct))
    }
}

/// AdamW exactly as PyTorch's single-tensor implementation: decoupled decay `p ← p·(1 − lr·wd)` first,
/// then the moments, bias corrections with the step's beta1, and eps added outside the square root.
/// Parameters that do not require gradients are skipped and their step counters do not advance.
public final class AdamW {
    public var lr: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    public let parameters: [TrainableParameter]
    /// Per-parameter state, in the parameter's internal layout: first and second moments, step count.
    private let moment1: [UnsafeMutableBufferPointer<Float>]
    private let moment2: [UnsafeMutableBufferPointer<Float>]
    private var steps: [Int]

    public init(parameters: [TrainableParameter], lr: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999),
                eps: Double = 1e-8, weightDecay: Double = 0.01) {
        self.parameters = parameters
        self.lr = lr
        self.beta1 = betas.0
        self.beta2 = betas.1
        self.eps = eps
        self.weightDecay = weightDecay
        let zeros = { (p: TrainableParameter) -> UnsafeMutableBufferPointer<Float> in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: p.count)
            buffer.initialize(repeating: 0)
            return buffer
        }
        moment1 = parameters.map(zeros)
        moment2 = parameters.map(zeros)
        steps = Array(repeating: 0, count: parameters.count)
    }

    deinit {
        moment1.forEach { $0.deallocate() }
        moment2.forEach { $0.deallocate() }
    }

    /// What one parameter's update needs: its buffers and the scalars of its step.
    private struct Update {
        var value: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>
        var moment1: UnsafeMutablePointer<Float>, moment2: UnsafeMutablePointer<Float>
        /// Where the parameter starts in the concatenation of all updated parameters, and its length.
        var offset: Int, count: Int
        var decay: Float, stepSize: Float, correction2Sqrt: Float
    }

    /// One pass over all trainable parameters as one concatenated range, split across the training lanes
    /// (many tensors are small: a split per tensor would be a thread hand-off for a few hundred floats).
    public func step() {
        var updates: [Update] = []
        var total = 0
        for (index, p) in parameters.enumerated() where p.requiresGrad {
            steps[index] += 1
            p.valueChanged()
            let t = Double(steps[index])
            updates.append(Update(value: p.value.baseAddress!, gradient: UnsafePointer(p.gradient.baseAddress!),
                                  moment1: moment1[index].baseAddress!, moment2: moment2[index].baseAddress!,
                                  offset: total, count: p.count, decay: Float(1 - lr * weightDecay),
                                  stepSize: Float(lr / (1 - pow(beta1, t))),
                                  correction2Sqrt: Float((1 - pow(beta2, t)).squareRoot())))
            total += p.count
        }
        let b2 = Float(beta2), oneMinusB1 = Float(1 - beta1), oneMinusB2 = Float(1 - beta2), epsilon = Float(eps)
        updates.withUnsafeBufferPointer { updates in
            TrainingLanes.forEachRange(total, minimum: EngineTuning.copyFloatsPerPart) { range in
                for u in updates where u.offset < range.upperBound && u.offset + u.count > range.lowerBound {
                    // This lane's elements of the parameter, through the C kernel (vectorised for the CPU at hand).
                    let first = max(0, range.lowerBound - u.offset), end = min(u.count, range.upperBound - u.offset)
                    resnetkit_adamw(u.value + first, u.gradient + first, u.moment1 + first, u.moment2 + first, end - first,
                                    u.decay, b2, oneMinusB1, oneMinusB2, u.stepSize, u.correction2Sqrt, epsilon)
                }
            }
        }
    }

    /// Optimizer state by parameter name, torchvision layout: `exp_avg`, `exp_avg_sq`, and the step counts,
    /// for the parameters that have been stepped (a frozen backbone's zeros are not worth storing).
    public func state() -> (tensors: StateDict, steps: [String: Int]) {
        var tensors: StateDict = [:], counts: [String: Int] = [:]
        for (index, p) in parameters.enumerated() where steps[index] > 0 {
            tensors["\(p.name).exp_avg"] = Tensor(shape: p.shape, data: p.torchLayout(Array(moment1[index])))
            tensors["\(p.name).exp_avg_sq"] = Tensor(shape: p.shape, data: p.torchLayout(Array(moment2[index])))
            counts[p.name] = steps[index]
        }
        return (tensors, counts)
    }

    /// Restores what `state()` returned; parameters absent from it keep a fresh state.
    public func restore(tensors: StateDict, steps counts: [String: Int]) throws {
        for (index, p) in parameters.enumerated() {
            guard let m = tensors["\(p.name).exp_avg"], let v = tensors["\(p.name).exp_avg_sq"] else { continue }
            guard m.count == p.count, v.count == p.count else {
                throw StateDictError(problems: ["\(p.name): optimizer state has \(m.count) values, expected \(p.count)"])
            }
            _ = moment1[index].update(from: p.internalLayout(m.data))
            _ = moment2[index].update(from: p.internalLayout(v.data))
            steps[index] = max(0, counts[p.name] ?? 0)
        }
    }
}
