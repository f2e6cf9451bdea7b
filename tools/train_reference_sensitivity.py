# How sensitive the 10-step training trajectories of training_reference.safetensors are to float rounding:
# reruns them in PyTorch (float32, float64, float32 with 1e-6 input noise) and prints the error against the
# stored reference. Usage: train_reference_sensitivity.py full|head_trainbn|head_evalbn
import torch, torchvision, sys
from safetensors.torch import load_file
torch.set_num_threads(2)
ref = load_file('/work/shared/reference/training_reference.safetensors')
sd = load_file('/work/shared/reference/resnet18.safetensors')
def build(dtype):
    m = torchvision.models.resnet18(weights=None)
    m.load_state_dict(sd)
    for k,v in m.state_dict().items():
        if k.endswith('num_batches_tracked'): v.zero_()
    m.fc = torch.nn.Identity()
    head = torch.nn.Sequential()
    head.bn1 = torch.nn.BatchNorm1d(512); head.dp1=torch.nn.Dropout(0); head.fc1=torch.nn.Linear(512,256); head.relu=torch.nn.ReLU(); head.bn2=torch.nn.BatchNorm1d(256); head.dp2=torch.nn.Dropout(0); head.fc2=torch.nn.Linear(256,2)
    head.load_state_dict({k[10:]:v for k,v in ref.items() if k.startswith('init/head.')})
    model = torch.nn.Sequential(); model.backbone=m; model.head=head
    return model.to(dtype)
def run(dtype, mode, noise=0.0):
    model = build(dtype); model.train()
    x = ref['x'].to(dtype); y = ref['y']
    if noise: x = x * (1 + noise*torch.randn_like(x))
    if mode != 'full':
        for p in model.backbone.parameters(): p.requires_grad=False
        if mode=='head_evalbn': model.backbone.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    losses=[]
    for i in range(10):
        opt.zero_grad(); out=model(x); loss=torch.nn.functional.cross_entropy(out,y); loss.backward(); opt.step(); sch.step(); losses.append(loss.item())
    return model, losses
mode=sys.argv[1]
for dtype, noise in [(torch.float32,0),(torch.float64,0),(torch.float32,1e-6)]:
    m, l = run(dtype, mode, noise)
    s = {(k if k.startswith('head.') else k[9:]):v for k,v in m.state_dict().items()}
    worst = {}
    for k in ref:
        if k.startswith(mode+'/final/'):
            name=k[len(mode)+7:]; r=ref[k].double(); a=s[name].double()
            worst[name]=((a-r).abs().max()/r.abs().max()).item()
    top=sorted(worst.items(), key=lambda t:-t[1])[:3]
    lr = ref[mode+'/losses'].double(); ll=torch.tensor(l,dtype=torch.float64)
    print(dtype, noise, 'loss rel', ((ll-lr).abs()/lr).max().item(), top)
