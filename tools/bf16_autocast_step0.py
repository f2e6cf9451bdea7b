# Step-0 gradients of the training reference under PyTorch's CPU bf16 autocast, against the stored fp32 ones
# (max |diff| / max |reference| per tensor): how far bf16 itself lands from fp32 on this fixture.
import torch, sys
sys.argv = ['x', 'full']
exec(open('tools/train_reference_sensitivity.py').read().split("mode=sys.argv[1]")[0])
model = build(torch.float32); model.train()
x = ref['x']; y = ref['y']
with torch.autocast('cpu', dtype=torch.bfloat16):
    out = model(x)
loss = torch.nn.functional.cross_entropy(out.float(), y); loss.backward()
print('logits', ((out.float()-ref['step0/logits']).abs().max()/ref['step0/logits'].abs().max()).item())
errs = {}
for name, p in model.named_parameters():
    n = name if name.startswith('head.') else name[9:]
    r = ref['step0/grad/'+n]
    errs[n] = ((p.grad-r).abs().max()/r.abs().max()).item()
for k, v in sorted(errs.items(), key=lambda t: -t[1])[:12]: print(k, v)
print('median', sorted(errs.values())[len(errs)//2])
