import Dispatch
import Foundation
import ResNetDNNL
import ResNetModel

/// `resnetkit-bench train`: training steps/s and images/s at 49x49 (or `--sides`), batch 16 and 64, for the head phase
/// (frozen backbone; its BatchNorm in train mode as the seed, or in eval mode, which runs the fused inference
/// plan) and the whole model, in fp32 and/or bf16 (`fine-tune --precision bf16`: oneDNN convolutions, the
/// frozen eval-mode backbone as bf16 inference); random weights and images.
/// Compare with `tools/bench_train_pytorch.py` run on the same machine.
func runTrainingBenchmark(batches: [Int] = [16, 64], side: Int = 49, steps: Int = 10, phases: [TrainingPhase] = TrainingPhase.allCases,
                          precisions: [Precision] = [.fp32]) {
    let architecture = Architecture(ModelConfig(numClasses: 2, head: .mlp, dropout: 0.5))
    var rng = SplitMix64(seed: 1)
    let state = ParameterInitialization.model(architecture, rng: &rng)
    // As the commands take it: RESNETKIT_WINOGRAD=off keeps bf16 on oneDNN's convolutions.
    let workSaving: Bool?
    do { workSaving = try DNNLPlan.workSaving(environment: ProcessInfo.processInfo.environment) } catch {
        print("\(error)")
        return
    }
    print("training benchmark: ResNet-18 + MLP head, \(side)x\(side), \(steps) timed steps after 2 warm-up steps")
    for batch in batches {
        let images = (0..<(batch * side * side * 3)).map { _ in rng.nextUnitFloat() }
        let labels = (0..<batch).map { $0 % 2 }
        for phase in phases {
          for precision in precisions {
            guard let model = try? TrainableResNet(architecture: architecture, state: state) else { return }
            model.setBackboneFrozen(phase != .whole)
            model.frozenBatchNorm = phase == .headEval ? .eval : .train
            if precision == .bf16 {
                do { try BF16Training.setUp(model, count: batch, height: side, width: side, workSaving: workSaving) } catch {
                    print("bf16: \(error)")
                    continue
                }
            }
            let optimizer = AdamW(parameters: model.parameters, lr: 1e-3, weightDecay: 0.05)
            func step() {
                images.withUnsafeBufferPointer {
                    _ = model.forward(images: $0.baseAddress!, count: batch, height: side, width: side, training: true)
                }
                model.backward(labels: labels)
                optimizer.step()
            }
            step(); step()
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps { step() }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            print(String(format: "batch %3d  %@  %-24@ %7.2f steps/s  %7.1f images/s", batch, precision.rawValue as NSString,
                         phase.title as NSString, Double(steps) / seconds, Double(steps * batch) / seconds))
          }
        }
    }
}

enum TrainingPhase: String, CaseIterable {
    case headTrain = "head-train", headEval = "head-eval", whole

    var title: String {
        switch self {
        case .headTrain: "head, frozen BN train"
        case .headEval: "head, frozen BN eval"
        case .whole: "whole model"
        }
    }
}
