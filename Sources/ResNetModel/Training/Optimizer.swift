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
    var moment1: [[Float]]
    var moment2: [[Float]]
    var steps: [Int]

    public init(parameters: [TrainableParameter], lr: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999),
                eps: Double = 1e-8, weightDecay: Double = 0.01) {
        self.parameters = parameters
        self.lr = lr
        self.beta1 = betas.0
        self.beta2 = betas.1
        self.eps = eps
        self.weightDecay = weightDecay
        moment1 = parameters.map { [Float](repeating: 0, count: $0.count) }
        moment2 = moment1
        steps = Array(repeating: 0, count: parameters.count)
    }

    public func step() {
        for (index, p) in parameters.enumerated() where p.requiresGrad {
            steps[index] += 1
            let t = Double(steps[index])
            let decay = Float(1 - lr * weightDecay)
            let b2 = Float(beta2), oneMinusB1 = Float(1 - beta1), oneMinusB2 = Float(1 - beta2)
            let stepSize = Float(lr / (1 - pow(beta1, t)))
            let correction2Sqrt = Float((1 - pow(beta2, t)).squareRoot())
            let epsilon = Float(eps)
            let value = p.value, grad = p.gradient
            moment1[index].withUnsafeMutableBufferPointer { m in
                moment2[index].withUnsafeMutableBufferPointer { v in
                    let m = m, v = v
                    Parallelism.forEachRange(p.count, minimumPerThread: 1 << 16) { range in
                        for i in range {
                            let g = grad[i]
                            let w = value[i] * decay
                            // lerp(m, g, 1 − b1) = m + (1 − b1)(g − m), as torch's lerp_ computes it.
                            m[i] += oneMinusB1 * (g - m[i])
                            v[i] = v[i] * b2 + oneMinusB2 * g * g
                            let denom = v[i].squareRoot() / correction2Sqrt + epsilon
                            value[i] = w - stepSize * (m[i] / denom)
                        }
                    }
                }
            }
        }
    }

    /// Optimizer state by parameter name, torchvision layout: `exp_avg`, `exp_avg_sq`, and the step counts,
    /// for the parameters that have been stepped (a frozen backbone's zeros are not worth storing).
    public func state() -> (tensors: StateDict, steps: [String: Int]) {
        var tensors: StateDict = [:], counts: [String: Int] = [:]
        for (index, p) in parameters.enumerated() where steps[index] > 0 {
            tensors["\(p.name).exp_avg"] = Tensor(shape: p.shape, data: p.torchLayout(moment1[index]))
            tensors["\(p.name).exp_avg_sq"] = Tensor(shape: p.shape, data: p.torchLayout(moment2[index]))
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
            moment1[index] = p.internalLayout(m.data)
            moment2[index] = p.internalLayout(v.data)
            steps[index] = max(0, counts[p.name] ?? 0)
        }
    }
}
